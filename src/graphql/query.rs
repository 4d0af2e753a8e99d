//! `Query`: reads from the read models. Only members read a room's history.

use async_graphql::{Context, Object, ID};

use super::context::{actor, app, fresh_room, require_member, room_id, user_id, within};
use super::error::{ApiError, ApiResult};
use super::types::{
    load_user, page_request, with_last_message, EventPage, Message, MessagePage, Room, StoredEvent,
    User,
};
use crate::live::LiveMessage;
use parley_domain::Role;
use parley_projections::{EventFilter, GlobalPosition};

#[derive(Debug, Default)]
pub struct Query;

/// Longest `search` query, in characters.
const MAX_SEARCH_QUERY: usize = 200;

/// A page size argument: `default` when absent, 1..=`max` otherwise.
fn page_size(first: Option<i64>, default: i64, max: i64) -> ApiResult<i64> {
    match first.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        n => Err(ApiError::BadInput(format!("first must be 1 to {max}, got {n}")).into()),
    }
}

// Resolver arguments are the GraphQL arguments API.md fixes (`messages` has seven).
#[allow(clippy::too_many_arguments)]
#[Object]
impl Query {
    /// The signed-in user.
    async fn me(&self, ctx: &Context<'_>) -> ApiResult<User> {
        load_user(ctx, actor(ctx)?).await
    }

    /// A user by id (`null` if there is none).
    async fn user(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<User>> {
        actor(ctx)?;
        let id = user_id(&id)?;
        Ok(app(ctx)
            .read_models
            .user(id)
            .await
            .map_err(ApiError::from)?
            .map(User))
    }

    /// The user registered under `username` (to find whom to invite); null if none.
    async fn user_by_name(&self, ctx: &Context<'_>, username: String) -> ApiResult<Option<User>> {
        actor(ctx)?;
        Ok(app(ctx)
            .read_models
            .credentials(&username)
            .await
            .map_err(ApiError::from)?
            .map(|found| User(found.user)))
    }

    /// Rooms the caller is a member of, most recent activity first.
    #[graphql(complexity = "50 * child_complexity + 1")]
    async fn rooms(&self, ctx: &Context<'_>) -> ApiResult<Vec<Room>> {
        let me = actor(ctx)?;
        let items = app(ctx)
            .read_models
            .rooms_of(me)
            .await
            .map_err(ApiError::from)?;
        Ok(items
            .into_iter()
            .map(|item| Room {
                view: item.room,
                last_message: Some(item.last_message.map(LiveMessage::from)),
                unread_count: Some(item.unread_count),
            })
            .collect())
    }

    /// The users the caller blocks, in id order.
    #[graphql(complexity = "50 * child_complexity + 1")]
    async fn blocked_users(&self, ctx: &Context<'_>) -> ApiResult<Vec<User>> {
        let me = actor(ctx)?;
        let blocked = app(ctx)
            .read_models
            .blocked_by(me)
            .await
            .map_err(ApiError::from)?;
        let mut users = Vec::with_capacity(blocked.len());
        for id in blocked {
            users.push(load_user(ctx, id).await?);
        }
        Ok(users)
    }

    /// PUBLIC rooms, most recent activity first: `first` (default 20, at most 100) after the
    /// room `after` (the id of the last room of the previous page). Non-members see no
    /// `lastMessage`.
    #[graphql(complexity = "(first.unwrap_or(20).clamp(1, 100) as usize) * child_complexity + 1")]
    async fn public_rooms(
        &self,
        ctx: &Context<'_>,
        first: Option<i64>,
        after: Option<String>,
    ) -> ApiResult<Vec<Room>> {
        actor(ctx)?;
        let first = page_size(first, 20, 100)?;
        let app = app(ctx);
        let after = match after {
            None => None,
            Some(cursor) => {
                let room = room_id(&ID(cursor))?;
                match app.read_models.room(room).await.map_err(ApiError::from)? {
                    Some(view) if view.visibility == parley_domain::RoomVisibility::Public => {
                        Some(room)
                    }
                    _ => {
                        return Err(ApiError::BadInput(
                            "after must be the id of a public room".to_owned(),
                        )
                        .into())
                    }
                }
            }
        };
        let views = app
            .read_models
            .public_rooms(after, first)
            .await
            .map_err(ApiError::from)?;
        let mut rooms = Vec::with_capacity(views.len());
        for view in views {
            rooms.push(with_last_message(ctx, Room::new(view)).await?);
        }
        Ok(rooms)
    }

    /// Full-text search over the messages of the rooms the caller is a member of (of
    /// `roomId` only, when given): every word must match (`"a phrase"`, `or`, `-word` work
    /// too), best match first, then newest; `first` default 20, at most 100. Words are
    /// matched whole and case-insensitively, without stemming. Deleted and erased text is
    /// never found.
    #[graphql(complexity = "(first.unwrap_or(20).clamp(1, 100) as usize) * child_complexity + 10")]
    async fn search(
        &self,
        ctx: &Context<'_>,
        query: String,
        room_id: Option<ID>,
        first: Option<i64>,
    ) -> ApiResult<Vec<Message>> {
        let me = actor(ctx)?;
        let first = page_size(first, 20, 100)?;
        if query.trim().is_empty() || query.chars().count() > MAX_SEARCH_QUERY {
            return Err(ApiError::BadInput(format!(
                "query must be 1 to {MAX_SEARCH_QUERY} characters, not only whitespace"
            ))
            .into());
        }
        if query.contains('\0') {
            return Err(ApiError::BadInput("query must not contain NUL".to_owned()).into());
        }
        let app = app(ctx);
        let room = match room_id {
            Some(id) => {
                let room = super::context::room_id(&id)?;
                require_member(app, room, me).await?;
                Some(room)
            }
            None => None,
        };
        within(app.limits.expensive(me))?;
        let found = app
            .read_models
            .search(me, &query, room, first)
            .await
            .map_err(ApiError::from)?;
        Ok(found
            .into_iter()
            .map(|m| Message(LiveMessage::from(m)))
            .collect())
    }

    /// A room its members and invitees may see (`null` if there is none); only members see
    /// its messages (`lastMessage`). With `atPosition`: the room as it was once the global
    /// log reached that position (members of now, analysts and admins may look back).
    #[graphql(complexity = "child_complexity + if at_position.is_some() { 100 } else { 1 }")]
    async fn room(
        &self,
        ctx: &Context<'_>,
        id: ID,
        at_position: Option<i64>,
    ) -> ApiResult<Option<Room>> {
        let me = actor(ctx)?;
        let id = room_id(&id)?;
        let app = app(ctx);
        let Some(view) = app.read_models.room(id).await.map_err(ApiError::from)? else {
            return Ok(None);
        };
        // A private or direct room does not exist for outsiders: the answer of a missing
        // one (analysts, who read the whole log anyway, may still look back at it).
        let looks_back_as_analyst = at_position.is_some() && is_analyst(app, me).await?;
        if !view.visible_to(me) && !looks_back_as_analyst {
            return Ok(None);
        }
        let member = view.members.contains(&me);
        let Some(position) = at_position else {
            if !member && !view.invited.contains(&me) {
                return Err(
                    ApiError::Forbidden("you are not a member of this room".to_owned()).into(),
                );
            }
            // An invitee sees the room, not its messages (`with_last_message` hides them).
            return with_last_message(ctx, Room::new(view)).await.map(Some);
        };
        if !member && !is_analyst(app, me).await? {
            return Err(ApiError::Forbidden(
                "only members, analysts and admins may look back at a room".to_owned(),
            )
            .into());
        }
        if position < 0 {
            return Err(ApiError::BadInput("atPosition must not be negative".to_owned()).into());
        }
        within(app.limits.expensive(me))?;
        let Some(then) = app
            .read_models
            .room_at(id, GlobalPosition(position))
            .await
            .map_err(ApiError::from)?
        else {
            return Ok(None);
        };
        let mut room = Room::new(then.view());
        room.last_message = Some(then.last_message.clone().map(LiveMessage::from));
        room.unread_count = Some(0);
        Ok(Some(room))
    }

    /// A page of a room's history, oldest first: `after`/`before` are exclusive seq bounds,
    /// `first` reads forward, `last` backward; default 50, at most 100. Members only.
    #[graphql(
        complexity = "(first.or(last).unwrap_or(50).clamp(1, 100) as usize) * child_complexity + if at_position.is_some() { 100 } else { 1 }"
    )]
    async fn messages(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        after: Option<i64>,
        before: Option<i64>,
        first: Option<i64>,
        last: Option<i64>,
        at_position: Option<i64>,
    ) -> ApiResult<MessagePage> {
        let me = actor(ctx)?;
        let room = super::context::room_id(&room_id)?;
        let request = page_request(after, before, first, last);
        request
            .validate()
            .map_err(|e| ApiError::BadInput(e.to_string()))?;
        let app = app(ctx);
        let state = require_member(app, room, me).await?;
        // Read your writes: a message whose send has returned is in the page.
        let last_seq = state.last_seq();
        fresh_room(app, room, |v| v.last_seq >= last_seq).await?;
        if let Some(position) = at_position {
            if position < 0 {
                return Err(
                    ApiError::BadInput("atPosition must not be negative".to_owned()).into(),
                );
            }
            within(app.limits.expensive(me))?;
            let page = app
                .read_models
                .messages_at(room, request, GlobalPosition(position))
                .await
                .map_err(ApiError::from)?;
            return Ok(page.into());
        }
        let page = app
            .read_models
            .messages(room, request)
            .await
            .map_err(ApiError::from)?;
        Ok(page.into())
    }

    /// A page of the global log in position order (roles `analyst` and `admin`): events with
    /// position > `after` (default 0), at most `first` (default 100, at most 1000), optionally
    /// of one aggregate type (`User`, `Room`), one aggregate, some event types. Password hashes
    /// are redacted.
    #[graphql(complexity = "(first.unwrap_or(100).clamp(1, 1000) as usize) * child_complexity + 1")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        after: Option<i64>,
        first: Option<i64>,
        aggregate_type: Option<String>,
        aggregate_id: Option<ID>,
        event_types: Option<Vec<String>>,
    ) -> ApiResult<EventPage> {
        let me = actor(ctx)?;
        let app = app(ctx);
        if !is_analyst(app, me).await? {
            return Err(ApiError::Forbidden(
                "reading the event log needs role analyst or admin".to_owned(),
            )
            .into());
        }
        within(app.limits.expensive(me))?;
        let filter = EventFilter::parse(
            None,
            None,
            aggregate_type.as_deref(),
            aggregate_id.as_ref().map(|id| id.as_str()),
            &event_types.unwrap_or_default(),
        )
        .map_err(|e| ApiError::BadInput(e.to_string()))?;
        let page = app
            .read_models
            .events(after, first, &filter)
            .await
            .map_err(ApiError::from)?;
        Ok(EventPage {
            events: page.events.into_iter().map(StoredEvent).collect(),
            has_more: page.has_more,
        })
    }
}

/// Whether `user` may read the event log and look back in time.
async fn is_analyst(app: &crate::app::App, user: parley_domain::UserId) -> ApiResult<bool> {
    for role in [Role::Analyst, Role::Admin] {
        if app
            .commands
            .has_role(user, role)
            .await
            .map_err(ApiError::internal)?
        {
            return Ok(true);
        }
    }
    Ok(false)
}
