//! What resolvers get from their context: the app, the signed-in user, the request id.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, ID};
use parley_domain::{MessageSeq, RoomId, UserId};
use parley_projections::{GlobalPosition, MessageView, RoomView};

use super::error::{ApiError, ApiResult};
use super::loaders::UserLoader;
use super::types::Message;
use crate::app::App;
use crate::commands::CommandMeta;
use crate::live::LiveMessage;

/// The user a verified token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actor(pub UserId);

/// The address of the client (TCP peer) a request came from, when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);

/// The client's IP, if the server recorded it.
pub fn client_ip(ctx: &Context<'_>) -> Option<std::net::IpAddr> {
    ctx.data_opt::<ClientIp>().map(|ip| ip.0)
}

/// A rate-limit check as an API result: `RATE_LIMITED` with `retryAfterMs`.
pub fn within(check: Result<(), crate::limits::Refused>) -> ApiResult<()> {
    check.map_err(|refused| ApiError::rate_limited(refused.what, refused.retry_after).into())
}

/// The request (HTTP) or connection (WebSocket) id, for metadata and logs.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

pub use crate::live::SubscriptionBudget;

pub fn app<'a>(ctx: &Context<'a>) -> &'a App {
    ctx.data_unchecked::<App>()
}

pub fn users<'a>(ctx: &Context<'a>) -> &'a DataLoader<UserLoader> {
    ctx.data_unchecked::<Arc<DataLoader<UserLoader>>>()
}

/// The signed-in user, or `UNAUTHENTICATED`.
pub fn actor(ctx: &Context<'_>) -> ApiResult<UserId> {
    ctx.data_opt::<Actor>().map(|a| a.0).ok_or_else(|| {
        ApiError::Unauthenticated("sign in first: send a bearer token".to_owned()).into()
    })
}

pub fn meta(ctx: &Context<'_>) -> CommandMeta {
    let request_id = ctx
        .data_opt::<RequestId>()
        .map_or_else(|| "-".to_owned(), |r| r.0.clone());
    CommandMeta::new(ctx.data_opt::<Actor>().map(|a| a.0), request_id)
}

/// Parses an id argument.
pub fn room_id(id: &ID) -> ApiResult<RoomId> {
    RoomId::parse(id)
        .map_err(|_| ApiError::BadInput(format!("{:?} is not a valid room id", id.as_str())).into())
}

pub fn user_id(id: &ID) -> ApiResult<UserId> {
    UserId::parse(id)
        .map_err(|_| ApiError::BadInput(format!("{:?} is not a valid user id", id.as_str())).into())
}

/// Requires the actor to be a member of the room, judged by the room aggregate itself (so a
/// leave or join takes effect at once). `NOT_FOUND` for a room that does not exist.
pub async fn require_member(
    app: &App,
    room: RoomId,
    user: UserId,
) -> ApiResult<parley_domain::Room> {
    Ok(member_at(app, room, user).await?.0)
}

/// [`require_member`], with the room's aggregate sequence the answer holds at.
pub async fn member_at(
    app: &App,
    room: RoomId,
    user: UserId,
) -> ApiResult<(parley_domain::Room, i64)> {
    let state = app
        .commands
        .room_state(room)
        .await
        .map_err(ApiError::internal)?;
    match state {
        None => Err(ApiError::NotFound("no such room".to_owned()).into()),
        Some((state, _)) if !state.is_member(user) => {
            Err(ApiError::Forbidden("you are not a member of this room".to_owned()).into())
        }
        Some((state, sequence)) => Ok((state, sequence as i64)),
    }
}

/// Message `seq` of `room` as the read model shows it once it reflects the change at
/// `position` (`START`: no change was written; read it as it is).
pub async fn fresh_message(
    app: &App,
    room: RoomId,
    seq: MessageSeq,
    position: GlobalPosition,
) -> ApiResult<Message> {
    let read = || async move {
        Ok(app
            .read_models
            .message(room, seq)
            .await
            .map_err(ApiError::from)?)
    };
    let view = once_projected(app, "message", read, |view: &MessageView| {
        view.position >= position
    })
    .await?;
    Ok(Message(LiveMessage::from(view)))
}

/// The room as the read model shows it once it reflects `ready` (read-your-writes after a
/// command: the projector is a few milliseconds behind the command).
pub async fn fresh_room(
    app: &App,
    room: RoomId,
    ready: impl Fn(&RoomView) -> bool,
) -> ApiResult<RoomView> {
    let read = || async move { Ok(app.read_models.room(room).await.map_err(ApiError::from)?) };
    once_projected(app, "room", read, ready).await
}

/// Waits (at most 5 s) until the read models hold the change at `position` (read-your-writes
/// for a mutation that answers with no view to wait on); after that, goes on with a warning.
pub async fn projected_to(app: &App, position: GlobalPosition, what: &str) {
    if !app
        .projected
        .reached(position, Duration::from_secs(5))
        .await
    {
        tracing::warn!(%position, "read models still behind {what} after 5 s");
    }
}

/// What `read` answers once it is `ready`, re-read only when the projector announces a new
/// checkpoint; after 5 s (or if the projector follower stopped), what there is.
async fn once_projected<T, Read, Fut>(
    app: &App,
    what: &str,
    read: Read,
    ready: impl Fn(&T) -> bool,
) -> ApiResult<T>
where
    Read: Fn() -> Fut,
    Fut: std::future::Future<Output = ApiResult<Option<T>>>,
{
    match read_when_projected(app, Duration::from_secs(5), read, &ready).await? {
        Some(found) if ready(&found) => Ok(found),
        Some(found) => {
            tracing::warn!(what, "read model still behind after 5 s; answering with it");
            Ok(found)
        }
        None => Err(ApiError::internal(format!("{what} not projected within 5 s")).into()),
    }
}

/// What `read` answers once it is `ready`, re-read only when the projector announces a new
/// checkpoint; after `within` (or if the projector follower stopped), its last answer.
pub async fn read_when_projected<T, Read, Fut>(
    app: &App,
    within: Duration,
    read: Read,
    ready: impl Fn(&T) -> bool,
) -> ApiResult<Option<T>>
where
    Read: Fn() -> Fut,
    Fut: std::future::Future<Output = ApiResult<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut checkpoints = app.projected.watch();
    loop {
        let found = read().await?;
        if found.as_ref().is_some_and(&ready) {
            return Ok(found);
        }
        let moved = tokio::time::timeout_at(deadline, checkpoints.changed()).await;
        if !matches!(moved, Ok(Ok(()))) {
            return Ok(found);
        }
    }
}
