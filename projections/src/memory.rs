//! The embedded read side: the same read models and projector contract over the in-memory
//! log, for running without PostgreSQL.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use parley_domain::{MessageSeq, RoomId, RoomVisibility, UserId};
use tokio::sync::watch;

use crate::changes::{changes, CursorTo, MemberState, MessagesOp, RoomsOp, RowOp, UsersOp};
use crate::events::{EventFilter, EventPage};
use crate::live::LiveFeed;
use crate::log::{DecodedEvent, LogEvent};
use async_trait::async_trait;

use crate::postgres::{RebuildProgress, RebuildReport};
use crate::read_models::{ReadModelError, ReadModelStore};
use crate::time_travel::{RoomAt, RoomReplay};
use crate::views::{
    Credentials, MessagePage, MessageView, PageRequest, RoomListItem, RoomView, UserView,
};
use crate::{GlobalPosition, ProjectionStatus, PROJECTIONS};

/// What the embedded projector needs from the embedded event log. Its positions are its
/// insertion order, which is commit order there (appends are serialized).
pub trait EmbeddedLog: Send + Sync + 'static {
    /// Events with `position > after`, in order, at most `limit`.
    fn events_after(&self, after: GlobalPosition, limit: usize) -> Vec<LogEvent>;
    /// The newest position; changes whenever events are appended.
    fn head(&self) -> watch::Receiver<GlobalPosition>;

    /// The events of one aggregate with `position <= up_to`, in order (time travel). The
    /// default walks the whole log; a log with a per-aggregate index can do better.
    fn aggregate_events(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        up_to: GlobalPosition,
    ) -> Vec<LogEvent> {
        let mut found = Vec::new();
        let mut after = GlobalPosition::START;
        while after < up_to {
            let chunk = self.events_after(after, SCAN_CHUNK);
            let Some(last) = chunk.last() else {
                break;
            };
            after = last.position;
            found.extend(chunk.into_iter().filter(|e| {
                e.position <= up_to
                    && e.aggregate_type == aggregate_type
                    && e.aggregate_id == aggregate_id
            }));
        }
        found
    }
}

/// Events read at a time when the embedded log is scanned.
const SCAN_CHUNK: usize = 10_000;

#[derive(Clone, Debug)]
struct UserRow {
    view: UserView,
    password_hash: String,
}

#[derive(Clone, Debug)]
struct RoomRow {
    id: RoomId,
    name: String,
    topic: Option<String>,
    host: UserId,
    created_at: DateTime<Utc>,
    last_seq: MessageSeq,
    last_activity: i64,
    visibility: RoomVisibility,
    members: BTreeSet<UserId>,
    invited: BTreeSet<UserId>,
    moderators: BTreeSet<UserId>,
    banned: BTreeSet<UserId>,
}

#[derive(Debug, Default)]
struct State {
    checkpoint: i64,
    users: HashMap<UserId, UserRow>,
    usernames: HashMap<String, UserId>,
    rooms: HashMap<RoomId, RoomRow>,
    rooms_of_user: HashMap<UserId, BTreeSet<RoomId>>,
    /// Per room, messages by seq.
    messages: HashMap<RoomId, BTreeMap<MessageSeq, MessageView>>,
    /// Kept across resets, like `read_cursors` in Postgres.
    cursors: HashMap<(RoomId, UserId), MessageSeq>,
    /// Who blocks whom: blocker → the users they block.
    blocks: HashMap<UserId, BTreeSet<UserId>>,
    /// The search index: each word of a body (see [`words`]) → the messages holding it.
    words: HashMap<String, HashSet<(RoomId, MessageSeq)>>,
}

/// The words of a text as search sees them: runs of letters and digits, lower-cased (like
/// PostgreSQL's `simple` configuration, for plain words).
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
}

/// Moves message (`room`, `seq`) in the search index from the words of `old` to those of
/// `new`.
fn reindex(
    index: &mut HashMap<String, HashSet<(RoomId, MessageSeq)>>,
    room: RoomId,
    seq: MessageSeq,
    old: &str,
    new: &str,
) {
    for word in words(old) {
        if let Some(messages) = index.get_mut(&word) {
            messages.remove(&(room, seq));
            if messages.is_empty() {
                index.remove(&word);
            }
        }
    }
    for word in words(new) {
        index.entry(word).or_default().insert((room, seq));
    }
}

/// In-memory read models.
#[derive(Default)]
pub struct MemoryReadModels {
    state: RwLock<State>,
    /// The log they are fed from (set by [`MemoryProjector::new`]), for lag reporting.
    log: OnceLock<Arc<dyn EmbeddedLog>>,
}

impl std::fmt::Debug for MemoryReadModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReadModels")
            .field("checkpoint", &self.checkpoint())
            .finish_non_exhaustive()
    }
}

impl State {
    fn room_view(&self, room: &RoomRow) -> RoomView {
        RoomView {
            id: room.id,
            name: room.name.clone(),
            topic: room.topic.clone(),
            host: room.host,
            created_at: room.created_at,
            last_seq: room.last_seq,
            visibility: room.visibility,
            members: room.members.iter().copied().collect(),
            invited: room.invited.iter().copied().collect(),
            moderators: room.moderators.iter().copied().collect(),
            banned: room.banned.iter().copied().collect(),
        }
    }

    /// How many of `room`'s messages `user` has not read.
    fn unread(&self, room: RoomId, user: UserId) -> i64 {
        let last_seq = self
            .rooms
            .get(&room)
            .map_or(MessageSeq::ZERO, |r| r.last_seq);
        let read = self.cursors.get(&(room, user)).copied();
        let unread = read.unwrap_or(MessageSeq::ZERO).until(last_seq);
        i64::try_from(unread).unwrap_or(i64::MAX)
    }

    fn bump_cursor(&mut self, room: RoomId, user: UserId, seq: MessageSeq) {
        let cursor = self.cursors.entry((room, user)).or_insert(MessageSeq::ZERO);
        *cursor = (*cursor).max(seq);
    }

    /// The embedded writer: applies the event's row operations ([`changes`], shared with
    /// the SQL writer) to the maps that mirror the tables, keeping their indexes.
    fn apply(&mut self, log: &LogEvent, decoded: &DecodedEvent) {
        let position = log.position.0;
        for op in changes(decoded) {
            match op {
                RowOp::Users(op) => self.apply_users(op),
                RowOp::Rooms(op) => self.apply_rooms(op, position),
                RowOp::Messages(op) => self.apply_messages(op, position),
            }
        }
        self.checkpoint = position;
    }

    fn apply_users(&mut self, op: UsersOp<'_>) {
        match op {
            UsersOp::Insert {
                user,
                username,
                password_hash,
                created_at,
            } => {
                self.usernames.insert(username.to_owned(), user);
                self.users.insert(
                    user,
                    UserRow {
                        view: UserView {
                            id: user,
                            username: username.to_owned(),
                            roles: Vec::new(),
                            created_at,
                        },
                        password_hash: password_hash.to_owned(),
                    },
                );
            }
            UsersOp::GrantRole { user, role } => {
                if let Some(user) = self.users.get_mut(&user) {
                    if !user.view.roles.iter().any(|r| r == role) {
                        user.view.roles.push(role.to_owned());
                    }
                }
            }
            UsersOp::Erase { user: id, username } => {
                if let Some(user) = self.users.get_mut(&id) {
                    self.usernames.remove(&user.view.username);
                    user.view.username = username;
                    user.password_hash.clear();
                    self.usernames.insert(user.view.username.clone(), id);
                }
            }
            UsersOp::Block { blocker, blocked } => {
                self.blocks.entry(blocker).or_default().insert(blocked);
            }
            UsersOp::Unblock { blocker, blocked } => {
                if let Some(blocks) = self.blocks.get_mut(&blocker) {
                    blocks.remove(&blocked);
                }
            }
        }
    }

    fn apply_rooms(&mut self, op: RoomsOp<'_>, position: i64) {
        let id = match op {
            RoomsOp::Insert {
                room,
                name,
                host,
                created_at,
                visibility,
            } => {
                self.rooms.insert(
                    room,
                    RoomRow {
                        id: room,
                        name: name.to_owned(),
                        topic: None,
                        host,
                        created_at,
                        last_seq: MessageSeq::ZERO,
                        last_activity: position,
                        visibility,
                        members: BTreeSet::new(),
                        invited: BTreeSet::new(),
                        moderators: BTreeSet::new(),
                        banned: BTreeSet::new(),
                    },
                );
                return;
            }
            RoomsOp::Cursor { room, user, to } => {
                let seq = match to {
                    CursorTo::Seq(seq) => Some(seq),
                    CursorTo::RoomLastSeq => self.rooms.get(&room).map(|r| r.last_seq),
                };
                if let Some(seq) = seq {
                    self.bump_cursor(room, user, seq);
                }
                return;
            }
            RoomsOp::Update { room, .. }
            | RoomsOp::SetHost { room, .. }
            | RoomsOp::Activity { room, .. }
            | RoomsOp::SetMember { room, .. }
            | RoomsOp::Invite { room, .. }
            | RoomsOp::SetRole { room, .. }
            | RoomsOp::RemoveMember { room, .. } => room,
        };
        let Some(room) = self.rooms.get_mut(&id) else {
            return;
        };
        // A member row is in exactly one of `members`, `invited`, `banned`; `moderators`
        // holds the members whose role is moderator.
        match op {
            RoomsOp::Update { name, topic, .. } => {
                if let Some(name) = name {
                    room.name = name.to_owned();
                }
                if let Some(topic) = topic {
                    room.topic = Some(topic.to_owned()).filter(|t| !t.is_empty());
                }
            }
            RoomsOp::SetHost { host, .. } => room.host = host,
            RoomsOp::Activity { seq, .. } => {
                room.last_seq = room.last_seq.max(seq);
                room.last_activity = room.last_activity.max(position);
            }
            RoomsOp::SetMember {
                user,
                state: MemberState::Member,
                ..
            } => {
                room.invited.remove(&user);
                room.banned.remove(&user);
                room.members.insert(user);
                self.rooms_of_user.entry(user).or_default().insert(id);
            }
            RoomsOp::SetMember {
                user,
                state: MemberState::Banned,
                ..
            } => {
                room.members.remove(&user);
                room.invited.remove(&user);
                room.moderators.remove(&user);
                room.banned.insert(user);
                self.forget_room_of(user, id);
            }
            RoomsOp::Invite { user, .. } => {
                if !(room.members.contains(&user) || room.banned.contains(&user)) {
                    room.invited.insert(user);
                }
            }
            RoomsOp::SetRole {
                user, moderator, ..
            } => {
                if moderator && room.members.contains(&user) {
                    room.moderators.insert(user);
                } else {
                    room.moderators.remove(&user);
                }
            }
            RoomsOp::RemoveMember {
                user,
                banned_only: true,
                ..
            } => {
                room.banned.remove(&user);
            }
            RoomsOp::RemoveMember { user, .. } => {
                room.members.remove(&user);
                room.invited.remove(&user);
                room.banned.remove(&user);
                room.moderators.remove(&user);
                self.forget_room_of(user, id);
            }
            RoomsOp::Insert { .. } | RoomsOp::Cursor { .. } => {}
        }
    }

    fn forget_room_of(&mut self, user: UserId, room: RoomId) {
        if let Some(rooms) = self.rooms_of_user.get_mut(&user) {
            rooms.remove(&room);
        }
    }

    fn apply_messages(&mut self, op: MessagesOp<'_>, position: i64) {
        let position = GlobalPosition(position);
        match op {
            MessagesOp::Insert {
                room,
                seq,
                message_id,
                sender,
                body,
                client_msg_id,
                sent_at,
                reply_to,
            } => {
                reindex(&mut self.words, room, seq, "", body);
                self.messages.entry(room).or_default().insert(
                    seq,
                    MessageView::sent(
                        message_id,
                        room,
                        seq,
                        sender,
                        body.to_owned(),
                        client_msg_id.to_owned(),
                        sent_at,
                        position,
                        reply_to,
                    ),
                );
            }
            MessagesOp::EraseSender { sender } => {
                let theirs = self
                    .messages
                    .values_mut()
                    .flat_map(|history| history.values_mut())
                    .filter(|m| m.sender == sender);
                for message in theirs {
                    let old = std::mem::take(&mut message.body);
                    reindex(&mut self.words, message.room_id, message.seq, &old, "");
                    message.apply_op(&op, position);
                }
            }
            MessagesOp::Edit { room, seq, .. }
            | MessagesOp::Erase { room, seq }
            | MessagesOp::React { room, seq, .. }
            | MessagesOp::Unreact { room, seq, .. } => {
                let message = self
                    .messages
                    .get_mut(&room)
                    .and_then(|messages| messages.get_mut(&seq));
                if let Some(message) = message {
                    let old = message.body.clone();
                    message.apply_op(&op, position);
                    if message.body != old {
                        reindex(&mut self.words, room, seq, &old, &message.body);
                    }
                }
            }
        }
    }
}

impl MemoryReadModels {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Every write applies one whole event; a panic mid-apply would be a bug in a pure
        // function over valid events. The state stays usable either way.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn checkpoint(&self) -> GlobalPosition {
        GlobalPosition(self.read().checkpoint)
    }

    /// Applies a batch of events that follows the checkpoint.
    pub fn apply(&self, batch: &[(LogEvent, DecodedEvent)]) {
        let mut state = self.write();
        for (log, decoded) in batch {
            if log.position.0 > state.checkpoint {
                state.apply(log, decoded);
            }
        }
    }

    fn messages_up_to(
        &self,
        room: RoomId,
        request: PageRequest,
        at: Option<GlobalPosition>,
    ) -> Result<MessagePage, ReadModelError> {
        let mut page = request.validate()?;
        let state = self.read();
        let Some(history) = state.messages.get(&room) else {
            return Ok(MessagePage {
                messages: Vec::new(),
                has_more: false,
            });
        };
        if let Some(at) = at {
            // Seq and position grow together within a room: history as of `at` is a prefix.
            let last = history
                .iter()
                .rev()
                .find(|(_, m)| m.position <= at)
                .map_or(MessageSeq::ZERO, |(seq, _)| *seq);
            page.before = page.before.min(last.next());
        }
        if page.after.next() >= page.before {
            return Ok(MessagePage {
                messages: Vec::new(),
                has_more: false,
            });
        }
        let range = history.range(page.after.next()..page.before);
        let limit = page.limit as usize;
        let (mut messages, has_more): (Vec<MessageView>, bool) = if page.backward {
            let mut taken: Vec<_> = range
                .rev()
                .take(limit + 1)
                .map(|(_, m)| m.clone())
                .collect();
            let more = taken.len() > limit;
            taken.truncate(limit);
            (taken, more)
        } else {
            let mut taken: Vec<_> = range.take(limit + 1).map(|(_, m)| m.clone()).collect();
            let more = taken.len() > limit;
            taken.truncate(limit);
            (taken, more)
        };
        if page.backward {
            messages.reverse();
        }
        Ok(MessagePage { messages, has_more })
    }

    /// The attached log (set when a [`MemoryProjector`] is built over these models).
    fn log(&self) -> Result<&Arc<dyn EmbeddedLog>, ReadModelError> {
        self.log.get().ok_or(ReadModelError::NoEventLog)
    }

    /// Empties the read models (cursors stay) so the projector replays the log.
    fn clear(&self, names: &[&str]) -> Result<(), ReadModelError> {
        if let Some(unknown) = names.iter().find(|n| !PROJECTIONS.contains(n)) {
            return Err(ReadModelError::UnknownProjection((*unknown).to_owned()));
        }
        // The embedded read models are one unit: any rebuild replays all of them.
        let mut state = self.write();
        let cursors = std::mem::take(&mut state.cursors);
        *state = State {
            cursors,
            ..State::default()
        };
        Ok(())
    }
}

#[async_trait]
impl ReadModelStore for MemoryReadModels {
    async fn user(&self, id: UserId) -> Result<Option<UserView>, ReadModelError> {
        Ok(self.read().users.get(&id).map(|u| u.view.clone()))
    }

    async fn users(&self, ids: &[UserId]) -> Result<HashMap<UserId, UserView>, ReadModelError> {
        let state = self.read();
        Ok(ids
            .iter()
            .filter_map(|id| state.users.get(id).map(|u| (*id, u.view.clone())))
            .collect())
    }

    async fn credentials(&self, username: &str) -> Result<Option<Credentials>, ReadModelError> {
        let state = self.read();
        Ok(state
            .usernames
            .get(username)
            .and_then(|id| state.users.get(id))
            .map(|u| Credentials {
                user: u.view.clone(),
                password_hash: u.password_hash.clone(),
            }))
    }

    async fn room(&self, id: RoomId) -> Result<Option<RoomView>, ReadModelError> {
        let state = self.read();
        Ok(state.rooms.get(&id).map(|r| state.room_view(r)))
    }

    async fn is_member(&self, room: RoomId, user: UserId) -> Result<bool, ReadModelError> {
        Ok(self
            .read()
            .rooms
            .get(&room)
            .is_some_and(|r| r.members.contains(&user)))
    }

    async fn rooms_of(&self, user: UserId) -> Result<Vec<RoomListItem>, ReadModelError> {
        let state = self.read();
        let mut items: Vec<RoomListItem> = state
            .rooms_of_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|id| state.rooms.get(id))
            .map(|room| RoomListItem {
                room: state.room_view(room),
                last_message: state
                    .messages
                    .get(&room.id)
                    .and_then(|m| m.get(&room.last_seq))
                    .cloned(),
                unread_count: state.unread(room.id, user),
                last_activity: GlobalPosition(room.last_activity),
            })
            .collect();
        items.sort_by(|a, b| {
            b.last_activity
                .cmp(&a.last_activity)
                .then(a.room.id.cmp(&b.room.id))
        });
        Ok(items)
    }

    /// The users `user` blocks, in id order.
    async fn blocked_by(&self, user: UserId) -> Result<Vec<UserId>, ReadModelError> {
        let state = self.read();
        Ok(state
            .blocks
            .get(&user)
            .map(|blocked| blocked.iter().copied().collect())
            .unwrap_or_default())
    }

    async fn public_rooms(
        &self,
        after: Option<RoomId>,
        limit: i64,
    ) -> Result<Vec<RoomView>, ReadModelError> {
        let state = self.read();
        let key = |room: &RoomRow| (room.last_activity, room.id);
        let mut public: Vec<&RoomRow> = state
            .rooms
            .values()
            .filter(|room| room.visibility == RoomVisibility::Public)
            .collect();
        public.sort_by_key(|room| std::cmp::Reverse(key(room)));
        let start = match after {
            None => 0,
            Some(cursor) => match state.rooms.get(&cursor) {
                Some(cursor) => public.partition_point(|room| key(room) >= key(cursor)),
                None => return Ok(Vec::new()),
            },
        };
        Ok(public
            .into_iter()
            .skip(start)
            .take(limit.max(0) as usize)
            .map(|room| state.room_view(room))
            .collect())
    }

    /// Every word of `query` must be in the body; ranked by how often the words occur,
    /// then newest first.
    async fn search(
        &self,
        user: UserId,
        query: &str,
        room: Option<RoomId>,
        limit: i64,
    ) -> Result<Vec<MessageView>, ReadModelError> {
        let state = self.read();
        let terms: Vec<String> = words(query).collect();
        let Some((first, rest)) = terms.split_first() else {
            return Ok(Vec::new());
        };
        let mine = state.rooms_of_user.get(&user);
        let in_scope = |(r, _): &&(RoomId, MessageSeq)| {
            room.is_none_or(|only| only == *r) && mine.is_some_and(|rooms| rooms.contains(r))
        };
        let mut found: Vec<(usize, &MessageView)> = state
            .words
            .get(first)
            .into_iter()
            .flatten()
            .filter(in_scope)
            .filter(|key| {
                rest.iter()
                    .all(|t| state.words.get(t).is_some_and(|m| m.contains(key)))
            })
            .filter_map(|(r, seq)| state.messages.get(r)?.get(seq))
            .map(|message| {
                let hits = words(&message.body).filter(|w| terms.contains(w)).count();
                (hits, message)
            })
            .collect();
        found.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.position.cmp(&a.1.position)));
        Ok(found
            .into_iter()
            .take(limit.max(0) as usize)
            .map(|(_, message)| message.clone())
            .collect())
    }

    async fn unread_count(&self, room: RoomId, user: UserId) -> Result<i64, ReadModelError> {
        let state = self.read();
        Ok(state.unread(room, user))
    }

    async fn messages(
        &self,
        room: RoomId,
        request: PageRequest,
    ) -> Result<MessagePage, ReadModelError> {
        self.messages_up_to(room, request, None)
    }

    /// A page of a room's history as it was at position `at`: only messages with
    /// `position <= at`.
    async fn messages_at(
        &self,
        room: RoomId,
        request: PageRequest,
        at: GlobalPosition,
    ) -> Result<MessagePage, ReadModelError> {
        if at.0 < 0 {
            return Err(crate::events::FilterError::NegativePosition(at.0).into());
        }
        self.messages_up_to(room, request, Some(at))
    }

    async fn messages_between(
        &self,
        room: RoomId,
        after: MessageSeq,
        up_to: MessageSeq,
        limit: i64,
    ) -> Result<Vec<MessageView>, ReadModelError> {
        if after >= up_to {
            return Ok(Vec::new());
        }
        Ok(self
            .read()
            .messages
            .get(&room)
            .map(|history| {
                history
                    .range(after.next()..=up_to)
                    .take(limit.max(0) as usize)
                    .map(|(_, m)| m.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn changed_messages(
        &self,
        room: RoomId,
        after: GlobalPosition,
        limit: i64,
    ) -> Result<Vec<MessageView>, ReadModelError> {
        let state = self.read();
        let mut changed: Vec<MessageView> = state
            .messages
            .get(&room)
            .map(|history| {
                history
                    .values()
                    .filter(|m| m.changed && m.position > after)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        changed.sort_by_key(|m| m.position);
        changed.truncate(limit.max(0) as usize);
        Ok(changed)
    }

    async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        seq: MessageSeq,
    ) -> Result<(), ReadModelError> {
        let mut state = self.write();
        let last_seq = state
            .rooms
            .get(&room)
            .ok_or(ReadModelError::UnknownRoom)?
            .last_seq;
        if seq > last_seq {
            return Err(ReadModelError::SeqOutOfRange { seq, last_seq });
        }
        state.bump_cursor(room, user, seq);
        Ok(())
    }

    async fn status(&self) -> Result<Vec<ProjectionStatus>, ReadModelError> {
        let checkpoint = self.checkpoint();
        let (lag_events, lag_ms) = match self.log.get() {
            Some(log) => {
                let head = *log.head().borrow();
                let oldest = log.events_after(checkpoint, 1);
                let age = oldest.first().map_or(0, |e| {
                    (Utc::now() - e.recorded_at).num_milliseconds().max(0)
                });
                ((head.0 - checkpoint.0).max(0), age)
            }
            None => (0, 0),
        };
        Ok(PROJECTIONS
            .iter()
            .map(|name| ProjectionStatus {
                name: (*name).to_owned(),
                checkpoint,
                lag_events,
                lag_ms,
            })
            .collect())
    }

    /// A page of the log for the `events` query, secrets redacted (see
    /// [`crate::postgres::PgEventLog::events`]).
    async fn events(
        &self,
        after: Option<i64>,
        first: Option<i64>,
        filter: &EventFilter,
    ) -> Result<EventPage, ReadModelError> {
        let (after, first) = EventPage::request(after, first)?;
        let log = self.log()?;
        let mut cursor = filter
            .from()
            .map_or(after, |from| after.max(GlobalPosition(from.0 - 1)));
        let wanted = first as usize + 1;
        let mut events = Vec::new();
        while events.len() < wanted && filter.to().is_none_or(|to| cursor < to) {
            let chunk = log.events_after(cursor, SCAN_CHUNK);
            let Some(last) = chunk.last() else {
                break;
            };
            cursor = last.position;
            events.extend(chunk.into_iter().filter(|e| filter.matches(e)));
        }
        let has_more = events.len() > first as usize;
        events.truncate(first as usize);
        Ok(EventPage {
            events: events.into_iter().map(LogEvent::redacted).collect(),
            has_more,
        })
    }

    /// The room as of position `at`, replayed from the log through the `Room` aggregate.
    async fn room_at(
        &self,
        room: RoomId,
        at: GlobalPosition,
    ) -> Result<Option<RoomAt>, ReadModelError> {
        if at.0 < 0 {
            return Err(crate::events::FilterError::NegativePosition(at.0).into());
        }
        let mut replay = RoomReplay::default();
        for event in self.log()?.aggregate_events("Room", &room.to_string(), at) {
            replay.apply(&event);
        }
        Ok(replay.finish(at))
    }

    /// The embedded store has no index to estimate from: its exact status is cheap.
    async fn lag_estimate(&self) -> Result<Vec<ProjectionStatus>, ReadModelError> {
        self.status().await
    }

    /// A rebuild here is a [`ReadModelStore::reset`]: one process owns the models and
    /// replays the log into them in moments, so there is nothing to shadow (and no events
    /// to report).
    async fn rebuild(
        &self,
        names: &[&str],
        _progress: &(dyn Fn(RebuildProgress) + Send + Sync),
    ) -> Result<RebuildReport, ReadModelError> {
        let started = std::time::Instant::now();
        self.clear(names)?;
        Ok(RebuildReport {
            projections: Vec::new(),
            events: 0,
            elapsed: started.elapsed(),
        })
    }

    async fn reset(&self, names: &[&str]) -> Result<(), ReadModelError> {
        self.clear(names)
    }
}

/// Feeds [`MemoryReadModels`] from an [`EmbeddedLog`] and publishes new events live.
pub struct MemoryProjector {
    log: Arc<dyn EmbeddedLog>,
    models: Arc<MemoryReadModels>,
    live: LiveFeed,
    batch_size: usize,
}

impl std::fmt::Debug for MemoryProjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryProjector").finish_non_exhaustive()
    }
}

impl MemoryProjector {
    pub fn new(log: Arc<dyn EmbeddedLog>, models: Arc<MemoryReadModels>, live: LiveFeed) -> Self {
        let _ = models.log.set(log.clone());
        Self {
            log,
            models,
            live,
            batch_size: 2000,
        }
    }

    /// Applies everything up to the log's head now. Events beyond `published` are new and go
    /// to the live feed; older ones (a replay after a reset) do not.
    fn drain(&self, published: &mut GlobalPosition) {
        loop {
            let batch: Vec<(LogEvent, DecodedEvent)> = self
                .log
                .events_after(self.models.checkpoint(), self.batch_size)
                .into_iter()
                .map(|event| {
                    let decoded = event.decode();
                    (event, decoded)
                })
                .collect();
            let Some((last, _)) = batch.last() else {
                return;
            };
            let last = last.position;
            self.models.apply(&batch);
            let fresh: Vec<_> = batch
                .into_iter()
                .filter(|(e, _)| e.position > *published)
                .collect();
            if !fresh.is_empty() {
                *published = last;
                self.live.publish(Arc::new(fresh));
            }
        }
    }

    /// Runs until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let mut head = self.log.head();
        let mut published = self.models.checkpoint();
        loop {
            self.drain(&mut published);
            tokio::select! {
                () = &mut shutdown => return,
                changed = head.changed() => if changed.is_err() { return },
                // A reset does not move the head; look again now and then.
                () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            }
        }
    }
}
