//! The GraphQL object types of API.md.

use super::timestamp::Timestamp;
use async_graphql::{ComplexObject, Context, Enum, Object, SimpleObject, ID};
use parley_domain::{RoomId, UserId};
use parley_projections::{MessagePage as MessagePageView, PageRequest, RoomView, UserView};

use super::context::{actor, app, users};
use super::error::{ApiError, ApiResult};
use crate::live::{LiveMessage, LiveNotice, NoticeKind};

/// Who may join a room.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "parley_domain::RoomVisibility")]
pub enum RoomVisibility {
    /// Any signed-in user may join by id.
    Public,
    /// Only invited users may join; outsiders cannot tell it exists.
    Private,
    /// The one room of two users (`openDirectRoom`); nobody else joins.
    Direct,
}

/// A member's standing in a room.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "parley_domain::RoomRole")]
pub enum RoomRole {
    /// Runs the room: sets roles, and moderates.
    Host,
    /// Renames the room, invites (to a private room), kicks, bans, deletes messages.
    Moderator,
    Member,
}

/// Resolves a user that must exist (a sender, a host, a member).
pub async fn load_user(ctx: &Context<'_>, id: UserId) -> ApiResult<User> {
    users(ctx)
        .load_one(id)
        .await
        .map_err(ApiError::internal)?
        .map(User)
        .ok_or_else(|| {
            ApiError::internal(format!("user {id} is referenced but not in the directory")).into()
        })
}

async fn load_users(ctx: &Context<'_>, ids: &[UserId]) -> ApiResult<Vec<User>> {
    let found = users(ctx)
        .load_many(ids.iter().copied())
        .await
        .map_err(ApiError::internal)?;
    Ok(ids
        .iter()
        .filter_map(|id| found.get(id).cloned().map(User))
        .collect())
}

/// A registered user.
#[derive(Clone, Debug)]
pub struct User(pub UserView);

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn username(&self) -> &str {
        &self.0.username
    }

    async fn created_at(&self) -> Timestamp {
        self.0.created_at.into()
    }

    /// Roles beyond a plain user: `analyst`, `admin`. Shown to the user themselves and to
    /// admins; empty for anyone else.
    async fn roles(&self, ctx: &Context<'_>) -> ApiResult<Vec<String>> {
        // Without a session the only user one can see is oneself, in the payload of
        // `login`/`register` (every other read needs a token).
        let Ok(me) = actor(ctx) else {
            return Ok(self.0.roles.clone());
        };
        if me == self.0.id {
            return Ok(self.0.roles.clone());
        }
        let admin = users(ctx)
            .load_one(me)
            .await
            .map_err(ApiError::internal)?
            .is_some_and(|viewer| viewer.roles.iter().any(|r| r == "admin"));
        Ok(if admin {
            self.0.roles.clone()
        } else {
            Vec::new()
        })
    }
}

/// A chat room.
#[derive(Clone, Debug)]
pub struct Room {
    pub view: RoomView,
    /// Precomputed by the rooms list; otherwise looked up.
    pub last_message: Option<Option<LiveMessage>>,
    pub unread_count: Option<i64>,
}

impl Room {
    pub fn new(view: RoomView) -> Self {
        Self {
            view,
            last_message: None,
            unread_count: None,
        }
    }
}

#[Object]
impl Room {
    async fn id(&self) -> ID {
        ID(self.view.id.to_string())
    }

    async fn name(&self) -> &str {
        &self.view.name
    }

    /// The room's topic (0–500 characters); null if none is set.
    async fn topic(&self) -> Option<&str> {
        self.view.topic.as_deref()
    }

    async fn host(&self, ctx: &Context<'_>) -> ApiResult<User> {
        load_user(ctx, self.view.host).await
    }

    async fn visibility(&self) -> RoomVisibility {
        self.view.visibility.into()
    }

    /// A member's role; null for someone who is not a member.
    async fn role(&self, user_id: ID) -> ApiResult<Option<RoomRole>> {
        let user = super::context::user_id(&user_id)?;
        Ok(self.view.role(user).map(Into::into))
    }

    /// Users banned from the room (the host and moderators only; `FORBIDDEN` for others).
    #[graphql(complexity = "20 * child_complexity + 1")]
    async fn banned(&self, ctx: &Context<'_>) -> ApiResult<Vec<User>> {
        let me = actor(ctx)?;
        if !self
            .view
            .role(me)
            .is_some_and(parley_domain::RoomRole::moderates)
        {
            return Err(ApiError::Forbidden(
                "only the room's host and moderators see its bans".to_owned(),
            )
            .into());
        }
        load_users(ctx, &self.view.banned).await
    }

    /// Members, in id order.
    #[graphql(complexity = "20 * child_complexity + 1")]
    async fn members(&self, ctx: &Context<'_>) -> ApiResult<Vec<User>> {
        load_users(ctx, &self.view.members).await
    }

    /// Invited users who have not joined yet.
    #[graphql(complexity = "20 * child_complexity + 1")]
    async fn invited(&self, ctx: &Context<'_>) -> ApiResult<Vec<User>> {
        load_users(ctx, &self.view.invited).await
    }

    /// Members connected right now, on any instance.
    #[graphql(complexity = "20 * child_complexity + 1")]
    async fn online(&self, ctx: &Context<'_>) -> ApiResult<Vec<User>> {
        let online = app(ctx)
            .presence
            .online_among(&self.view.members)
            .await
            .map_err(ApiError::internal)?;
        let ids: Vec<UserId> = self
            .view
            .members
            .iter()
            .copied()
            .filter(|m| online.contains(m))
            .collect();
        load_users(ctx, &ids).await
    }

    async fn created_at(&self) -> Timestamp {
        self.view.created_at.into()
    }

    async fn last_message(&self) -> ApiResult<Option<Message>> {
        Ok(self.last_message.clone().flatten().map(Message))
    }

    /// Messages after the caller's read cursor (0 for non-members).
    async fn unread_count(&self, ctx: &Context<'_>) -> ApiResult<i64> {
        if let Some(count) = self.unread_count {
            return Ok(count);
        }
        let me = actor(ctx)?;
        if !self.view.members.contains(&me) {
            return Ok(0);
        }
        Ok(app(ctx)
            .read_models
            .unread_count(self.view.id, me)
            .await
            .map_err(ApiError::from)?)
    }
}

/// Fills in a room's last message from the read model, for a member; anyone else (an
/// invitee, someone who just left) sees none.
pub async fn with_last_message(ctx: &Context<'_>, room: Room) -> ApiResult<Room> {
    last_message_for(app(ctx), actor(ctx).ok(), room).await
}

/// [`with_last_message`] as seen by `viewer` (for a subscription, which has no request
/// context when it yields).
pub async fn last_message_for(
    app: &crate::app::App,
    viewer: Option<UserId>,
    mut room: Room,
) -> ApiResult<Room> {
    let member = viewer.is_some_and(|me| room.view.members.contains(&me));
    if !member {
        room.last_message = Some(None);
    }
    if room.last_message.is_none() {
        let seq = room.view.last_seq;
        let last = app
            .read_models
            .message(room.view.id, seq)
            .await
            .map_err(ApiError::from)?;
        room.last_message = Some(last.map(LiveMessage::from));
    }
    Ok(room)
}

/// A message in a room.
#[derive(Clone, Debug)]
pub struct Message(pub LiveMessage);

#[Object]
impl Message {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn room_id(&self) -> ID {
        ID(self.0.room_id.to_string())
    }

    /// Contiguous 1, 2, 3… within the room.
    async fn seq(&self) -> i64 {
        self.0.seq.as_i64()
    }

    async fn sender(&self, ctx: &Context<'_>) -> ApiResult<User> {
        load_user(ctx, self.0.sender).await
    }

    async fn body(&self) -> &str {
        &self.0.body
    }

    async fn client_msg_id(&self) -> &str {
        &self.0.client_msg_id
    }

    async fn sent_at(&self) -> Timestamp {
        self.0.sent_at.into()
    }

    /// When the body was last edited; null if never.
    async fn edited_at(&self) -> Option<Timestamp> {
        self.0.edited_at.map(Timestamp::from)
    }

    /// A deleted message keeps its seq; its body is "" and its text is erased everywhere.
    async fn deleted(&self) -> bool {
        self.0.deleted
    }

    /// The message this one answers (null if none, or if it is not readable yet).
    async fn reply_to(&self, ctx: &Context<'_>) -> ApiResult<Option<Message>> {
        let Some(seq) = self.0.reply_to else {
            return Ok(None);
        };
        let found = app(ctx)
            .read_models
            .message(self.0.room_id, seq)
            .await
            .map_err(ApiError::from)?;
        Ok(found.map(|m| Message(LiveMessage::from(m))))
    }

    /// The reactions that stand, one entry per emoji.
    async fn reactions(&self, ctx: &Context<'_>) -> Vec<Reaction> {
        let me = actor(ctx).ok();
        self.0
            .reactions
            .iter()
            .map(|r| Reaction {
                emoji: r.emoji.clone(),
                count: r.users.len() as i64,
                mine: me.is_some_and(|me| r.users.contains(&me)),
            })
            .collect()
    }

    /// The global log position of the message's newest change (its send, edit, deletion or
    /// reaction).
    async fn position(&self) -> i64 {
        self.0.position.0
    }
}

/// One emoji's reactions to a message.
#[derive(SimpleObject, Debug)]
pub struct Reaction {
    pub emoji: String,
    pub count: i64,
    /// Whether the caller is among those who reacted.
    pub mine: bool,
}

/// A page of history, oldest first.
#[derive(SimpleObject, Debug)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// More messages exist beyond this page in the direction it was read.
    pub has_more: bool,
}

impl From<MessagePageView> for MessagePage {
    fn from(page: MessagePageView) -> Self {
        Self {
            messages: page
                .messages
                .into_iter()
                .map(|m| Message(LiveMessage::from(m)))
                .collect(),
            has_more: page.has_more,
        }
    }
}

/// Validated paging arguments.
pub fn page_request(
    after: Option<i64>,
    before: Option<i64>,
    first: Option<i64>,
    last: Option<i64>,
) -> PageRequest {
    PageRequest {
        after,
        before,
        first,
        last,
    }
}

/// A system notice: membership changes, presence, announcements.
#[derive(Clone, Debug)]
pub struct Notice(pub LiveNotice);

#[Object]
impl Notice {
    async fn kind(&self) -> NoticeKind {
        self.0.kind
    }

    async fn room_id(&self) -> Option<ID> {
        self.0.room_id.map(|r| ID(r.to_string()))
    }

    /// Whom the notice is about.
    async fn user(&self, ctx: &Context<'_>) -> ApiResult<Option<User>> {
        match self.0.user {
            Some(id) => load_user(ctx, id).await.map(Some),
            None => Ok(None),
        }
    }

    /// A human-readable sentence.
    async fn text(&self, ctx: &Context<'_>) -> ApiResult<String> {
        if let Some(text) = &self.0.text {
            return Ok(text.clone());
        }
        let name = |user: Option<UserId>| async move {
            match user {
                Some(id) => load_user(ctx, id).await.map(|u| u.0.username),
                None => Ok("someone".to_owned()),
            }
        };
        let who = name(self.0.user).await?;
        Ok(match self.0.kind {
            NoticeKind::RoomCreated => format!("{who} created the room"),
            NoticeKind::MemberInvited => format!("{} invited {who}", name(self.0.by).await?),
            NoticeKind::MemberJoined => format!("{who} joined"),
            NoticeKind::MemberLeft => format!("{who} left"),
            NoticeKind::MemberOnline => format!("{who} is online"),
            NoticeKind::MemberOffline => format!("{who} went offline"),
            NoticeKind::Announcement => "announcement".to_owned(),
            NoticeKind::RoomUpdated => format!("{who} updated the room's name or topic"),
            NoticeKind::MemberKicked => format!("{} removed {who}", name(self.0.by).await?),
            NoticeKind::MemberBanned => {
                let by = name(self.0.by).await?;
                match &self.0.reason {
                    Some(reason) => format!("{by} banned {who}: {reason}"),
                    None => format!("{by} banned {who}"),
                }
            }
            NoticeKind::MemberUnbanned => format!("{} unbanned {who}", name(self.0.by).await?),
            NoticeKind::RoleChanged => {
                let role = match self.0.role {
                    Some(parley_domain::RoomRole::Host) => "the host",
                    Some(parley_domain::RoomRole::Moderator) => "a moderator",
                    _ => "a member",
                };
                format!("{} made {who} {role}", name(self.0.by).await?)
            }
        })
    }

    /// Global log position of the event behind the notice (0 for ephemeral notices).
    async fn position(&self) -> i64 {
        self.0.position.0
    }

    async fn at(&self) -> Timestamp {
        self.0.at.into()
    }
}

/// Someone started or stopped typing.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct TypingEvent {
    #[graphql(skip)]
    pub room: RoomId,
    #[graphql(skip)]
    pub user_id: UserId,
    pub is_typing: bool,
}

#[ComplexObject]
impl TypingEvent {
    async fn room_id(&self) -> ID {
        ID(self.room.to_string())
    }

    async fn user(&self, ctx: &Context<'_>) -> ApiResult<User> {
        load_user(ctx, self.user_id).await
    }
}

/// A session token and its user.
#[derive(SimpleObject, Debug)]
pub struct AuthPayload {
    pub token: String,
    pub user: User,
}

/// One event of the global log, as analysts see it (secrets redacted).
#[derive(Clone, Debug)]
pub struct StoredEvent(pub parley_projections::LogEvent);

#[Object]
impl StoredEvent {
    /// Global position: strictly increasing in commit order, never skipped.
    async fn position(&self) -> i64 {
        self.0.position.0
    }

    /// `User` or `Room`.
    async fn aggregate_type(&self) -> &str {
        &self.0.aggregate_type
    }

    async fn aggregate_id(&self) -> ID {
        ID(self.0.aggregate_id.clone())
    }

    /// Position of the event within its aggregate's stream (1, 2, 3…).
    async fn sequence(&self) -> i64 {
        self.0.sequence
    }

    async fn event_type(&self) -> &str {
        &self.0.event_type
    }

    async fn event_version(&self) -> &str {
        &self.0.event_version
    }

    /// The event as stored (externally tagged by event type).
    async fn payload(&self) -> async_graphql::Json<serde_json::Value> {
        async_graphql::Json(self.0.payload.clone())
    }

    /// Acting user, request id and server timestamp of the command behind the event.
    async fn metadata(&self) -> async_graphql::Json<serde_json::Value> {
        async_graphql::Json(self.0.metadata.clone())
    }

    /// RFC 3339, UTC, microseconds: the same text as `parley events export`.
    async fn recorded_at(&self) -> String {
        self.0.recorded_at_rfc3339()
    }
}

/// A page of the global log.
#[derive(SimpleObject, Debug)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    pub has_more: bool,
}
