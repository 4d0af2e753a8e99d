//! `Query`: reads from the read models. Only members read a room's history.

use async_graphql::{Context, Object, ID};

use super::context::{actor, app, fresh_room, require_member, room_id, user_id};
use super::error::{ApiError, ApiResult};
use super::types::{load_user, page_request, with_last_message, MessagePage, Room, User};
use crate::live::LiveMessage;

#[derive(Debug, Default)]
pub struct Query;

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

    /// Rooms the caller is a member of, most recent activity first.
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

    /// A room its members and invitees may see (`null` if there is none).
    async fn room(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<Room>> {
        let me = actor(ctx)?;
        let id = room_id(&id)?;
        let Some(view) = app(ctx)
            .read_models
            .room(id)
            .await
            .map_err(ApiError::from)?
        else {
            return Ok(None);
        };
        if !view.members.contains(&me) && !view.invited.contains(&me) {
            return Err(ApiError::Forbidden("you are not a member of this room".to_owned()).into());
        }
        with_last_message(ctx, Room::new(view)).await.map(Some)
    }

    /// A page of a room's history, oldest first: `after`/`before` are exclusive seq bounds,
    /// `first` reads forward, `last` backward; default 50, at most 100. Members only.
    async fn messages(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        after: Option<i64>,
        before: Option<i64>,
        first: Option<i64>,
        last: Option<i64>,
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
        let last_seq = state.last_seq().0 as i64;
        fresh_room(app, room, |v| v.last_seq >= last_seq).await?;
        let page = app
            .read_models
            .messages(room, request)
            .await
            .map_err(ApiError::from)?;
        Ok(page.into())
    }
}
