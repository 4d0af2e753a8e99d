//! `Mutation`: each runs one domain command (or an ephemeral action) as the signed-in user.

use async_graphql::{Context, Object, ID};
use parley_domain::{MessageSeq, Password, RoomError, UserId, ValueError};
use parley_projections::UserView;

use super::context::{
    actor, app, client_ip, fresh_message, fresh_room, meta, projected_to, require_member, room_id,
    user_id, within,
};
use super::error::{ApiError, ApiResult};
use super::types::{with_last_message, AuthPayload, Message, Room, RoomRole, RoomVisibility, User};
use crate::auth;
use crate::commands::{CommandError, MessageChange, Moderation};
use crate::live::{LiveEvent, LiveMessage};
use crate::relay::{Channel, Relay};

#[derive(Debug, Default)]
pub struct Mutation;

/// A message seq from the API: one below 1 names no message, and the room refuses it as it
/// does any seq it has not reached.
fn message_seq(seq: i64) -> MessageSeq {
    MessageSeq::try_from(seq).unwrap_or(MessageSeq::ZERO)
}

/// Applies `change` to message `seq` as the caller; answers with the message once the read
/// model shows the change.
async fn change_message(
    ctx: &Context<'_>,
    room_id: ID,
    seq: i64,
    change: MessageChange,
) -> ApiResult<Message> {
    let (app, me, room) = (app(ctx), actor(ctx)?, super::context::room_id(&room_id)?);
    within(app.limits.send(me))?;
    let seq = message_seq(seq);
    let position = app
        .commands
        .change_message(room, me, seq, change, &meta(ctx))
        .await
        .map_err(ApiError::from)?;
    fresh_message(app, room, seq, position).await
}

fn password(raw: &str) -> ApiResult<Password> {
    Password::parse(raw).map_err(|e: ValueError| ApiError::BadInput(e.to_string()).into())
}

/// A hashing failure as the API reports it: too many waiting is a rate limit.
fn hashing_error(error: auth::AuthError) -> async_graphql::Error {
    match error {
        auth::AuthError::Busy => ApiError::rate_limited(
            "password checks in progress",
            std::time::Duration::from_secs(1),
        ),
        other => ApiError::internal(other),
    }
    .into()
}

fn bad_credentials() -> async_graphql::Error {
    ApiError::Unauthenticated("invalid username or password".to_owned()).into()
}

async fn publish_typing(relay: &Relay, room: parley_domain::RoomId, user: UserId, is_typing: bool) {
    let event = LiveEvent::Typing {
        room_id: room,
        user,
        is_typing,
    };
    crate::live::publish_ephemeral(relay, vec![(Channel::Room(room), event)]).await;
}

/// The password check behind `login`, without its answer delay.
async fn sign_in(ctx: &Context<'_>, username: String, password: String) -> ApiResult<AuthPayload> {
    let app = app(ctx);
    // A name that cannot exist or a password that cannot be right costs no hash.
    let Ok(name) = parley_domain::Username::parse(&username) else {
        return Err(bad_credentials());
    };
    if Password::parse(&password).is_err() {
        return Err(bad_credentials());
    }
    within(app.limits.login(client_ip(ctx), name.as_str()))?;
    let mut credentials = app
        .read_models
        .credentials(&username)
        .await
        .map_err(ApiError::from)?;
    if credentials.is_none()
        && app
            .log
            .username_taken(&name)
            .await
            .map_err(ApiError::internal)?
    {
        // Registered a moment ago: the directory is a few milliseconds behind the store.
        let read = || async {
            Ok(app
                .read_models
                .credentials(&username)
                .await
                .map_err(ApiError::from)?)
        };
        credentials = super::context::read_when_projected(
            app,
            std::time::Duration::from_secs(1),
            read,
            |_| true,
        )
        .await?;
    }
    let stored = credentials.as_ref().map(|c| c.password_hash.clone());
    if !auth::verify_password(password, stored)
        .await
        .map_err(hashing_error)?
    {
        return Err(bad_credentials());
    }
    let Some(credentials) = credentials else {
        return Err(bad_credentials());
    };
    let token = app
        .tokens
        .issue(credentials.user.id)
        .map_err(ApiError::internal)?;
    Ok(AuthPayload {
        token,
        user: User(credentials.user),
    })
}

#[Object]
impl Mutation {
    /// Creates an account and signs in. Username: 3–32 of `[a-z0-9_]`; password 8–128.
    async fn register(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
    ) -> ApiResult<AuthPayload> {
        // Everything cheap is checked before the (expensive) hash.
        parley_domain::Username::parse(&username).map_err(|e| ApiError::BadInput(e.to_string()))?;
        let password = self::password(&password)?;
        let app = app(ctx);
        within(app.limits.register(client_ip(ctx)))?;
        let hash = auth::hash_password(password).await.map_err(hashing_error)?;
        let id = app
            .commands
            .register_user(&username, hash, &meta(ctx))
            .await
            .map_err(ApiError::from)?;
        let token = app.tokens.issue(id).map_err(ApiError::internal)?;
        let user = User(UserView {
            id,
            username,
            roles: Vec::new(),
            created_at: chrono::Utc::now(),
        });
        let user = match app.read_models.user(id).await.map_err(ApiError::from)? {
            Some(view) => User(view),
            None => user,
        };
        Ok(AuthPayload { token, user })
    }

    /// Signs in. The same error for an unknown user and a wrong password, and every refusal
    /// is answered after the same delay (`PARLEY_LOGIN_FAILURE_DELAY_MS`).
    async fn login(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
    ) -> ApiResult<AuthPayload> {
        let arrived = tokio::time::Instant::now();
        let signed_in = sign_in(ctx, username, password).await;
        if signed_in.is_err() {
            let delay = app(ctx).limits.config().failed_login_delay;
            tokio::time::sleep_until(arrived + delay).await;
        }
        signed_in
    }

    /// Opens a room: the caller is its host and first member; `participants` are invited.
    /// `visibility` PUBLIC (the default) or PRIVATE; a direct room is `openDirectRoom`.
    async fn create_room(
        &self,
        ctx: &Context<'_>,
        name: String,
        participants: Option<Vec<ID>>,
        visibility: Option<RoomVisibility>,
    ) -> ApiResult<Room> {
        let me = actor(ctx)?;
        let participants = participants
            .unwrap_or_default()
            .iter()
            .map(user_id)
            .collect::<ApiResult<Vec<_>>>()?;
        let app = app(ctx);
        let room = app
            .commands
            .create_room_with(
                me,
                &name,
                participants,
                visibility.map_or_else(Default::default, Into::into),
                &meta(ctx),
            )
            .await
            .map_err(ApiError::from)?;
        let view = fresh_room(app, room, |_| true).await?;
        with_last_message(ctx, Room::new(view)).await
    }

    /// The one direct room of the caller and `userId`: the same room for either of them,
    /// every time. Opening it creates it (both are members); opening it after leaving it
    /// brings the caller back.
    async fn open_direct_room(&self, ctx: &Context<'_>, user_id: ID) -> ApiResult<Room> {
        let me = actor(ctx)?;
        let peer = self::user_id(&user_id)?;
        let app = app(ctx);
        let (room, position) = app
            .commands
            .open_direct(me, peer, &meta(ctx))
            .await
            .map_err(ApiError::from)?;
        projected_to(app, position, "a direct room").await;
        let view = fresh_room(app, room, |v| v.members.contains(&me)).await?;
        with_last_message(ctx, Room::new(view)).await
    }

    /// The host gives a member a role: MODERATOR, MEMBER, or HOST (handing the room over:
    /// the caller becomes a moderator). Members get a `ROLE_CHANGED` notice.
    async fn set_member_role(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        user_id: ID,
        role: RoomRole,
    ) -> ApiResult<Room> {
        let user = self::user_id(&user_id)?;
        moderate(ctx, &room_id, Moderation::SetRole(user, role.into())).await
    }

    /// The host or a moderator removes a member of lower rank, who may join again (a
    /// private room's only when invited again). Their subscriptions to the room end; the
    /// room and they get a `MEMBER_KICKED` notice.
    async fn kick(&self, ctx: &Context<'_>, room_id: ID, user_id: ID) -> ApiResult<Room> {
        let user = self::user_id(&user_id)?;
        moderate(ctx, &room_id, Moderation::Kick(user)).await
    }

    /// The host or a moderator removes a user (a member of lower rank, or anyone not in the
    /// room) and keeps them out until `unban`; `reason` 0–500 characters. `MEMBER_BANNED`.
    async fn ban(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        user_id: ID,
        reason: Option<String>,
    ) -> ApiResult<Room> {
        let user = self::user_id(&user_id)?;
        moderate(ctx, &room_id, Moderation::Ban(user, reason)).await
    }

    /// The caller stops receiving `userId`'s messages live (they stay in the history, and
    /// in `blockedUsers`), and `userId` can no longer open a direct room with the caller.
    /// Blocking someone blocked already changes nothing. Always `true`.
    async fn block_user(&self, ctx: &Context<'_>, user_id: ID) -> ApiResult<bool> {
        set_block(ctx, &user_id, true).await
    }

    /// Takes a block back (unblocking someone not blocked changes nothing). Always `true`.
    async fn unblock_user(&self, ctx: &Context<'_>, user_id: ID) -> ApiResult<bool> {
        set_block(ctx, &user_id, false).await
    }

    /// The host or a moderator lets a banned user join again. `MEMBER_UNBANNED`.
    async fn unban(&self, ctx: &Context<'_>, room_id: ID, user_id: ID) -> ApiResult<Room> {
        let user = self::user_id(&user_id)?;
        moderate(ctx, &room_id, Moderation::Unban(user)).await
    }

    /// Joins a room by id. Joining a room one is in is a `CONFLICT`.
    async fn join_room(&self, ctx: &Context<'_>, room_id: ID) -> ApiResult<Room> {
        let me = actor(ctx)?;
        let room = super::context::room_id(&room_id)?;
        let app = app(ctx);
        app.commands
            .join_room(room, me, &meta(ctx))
            .await
            .map_err(ApiError::from)?;
        let view = fresh_room(app, room, |v| v.members.contains(&me)).await?;
        with_last_message(ctx, Room::new(view)).await
    }

    /// The host or a moderator (either user of a direct room) renames the room and/or sets
    /// its topic (0–500 characters; `""` clears it). Members get a `ROOM_UPDATED` notice;
    /// giving nothing new changes nothing.
    async fn update_room(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        name: Option<String>,
        topic: Option<String>,
    ) -> ApiResult<Room> {
        let me = actor(ctx)?;
        let room = super::context::room_id(&room_id)?;
        let app = app(ctx);
        let position = app
            .commands
            .update_room(room, me, name, topic, &meta(ctx))
            .await
            .map_err(ApiError::from)?;
        projected_to(app, position, "a room update").await;
        let view = fresh_room(app, room, |_| true).await?;
        with_last_message(ctx, Room::new(view)).await
    }

    /// Invites a registered user to a room the caller is a member of (any member of a PUBLIC
    /// room; the host and moderators of a PRIVATE one; nobody to a DIRECT one): they get a
    /// `MEMBER_INVITED` notice (and the room one). Inviting a member or someone already
    /// invited is a `CONFLICT`; inviting a banned user is `FORBIDDEN`.
    async fn invite(&self, ctx: &Context<'_>, room_id: ID, user_id: ID) -> ApiResult<Room> {
        let me = actor(ctx)?;
        let room = super::context::room_id(&room_id)?;
        let user = self::user_id(&user_id)?;
        let app = app(ctx);
        app.commands
            .invite(room, me, user, &meta(ctx))
            .await
            .map_err(ApiError::from)?;
        let view = fresh_room(app, room, |v| v.invited.contains(&user)).await?;
        with_last_message(ctx, Room::new(view)).await
    }

    /// Leaves a room (the host too); the room and its history remain. Leaving a room one is
    /// not in is a `CONFLICT`.
    async fn leave_room(&self, ctx: &Context<'_>, room_id: ID) -> ApiResult<Room> {
        let me = actor(ctx)?;
        let room = super::context::room_id(&room_id)?;
        let app = app(ctx);
        match app.commands.leave_room(room, me, &meta(ctx)).await {
            Err(CommandError::Rejected(RoomError::NotMember)) => {
                return Err(
                    ApiError::Conflict("you are not a member of this room".to_owned()).into(),
                )
            }
            other => other.map_err(ApiError::from)?,
        }
        let view = fresh_room(app, room, |v| !v.members.contains(&me)).await?;
        with_last_message(ctx, Room::new(view)).await
    }

    /// Sends a message; returns it once it is durable. Repeating a `clientMsgId` returns the
    /// original message and stores nothing. `replyTo`: the seq of an earlier message of the
    /// same room this one answers.
    async fn send_message(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        body: String,
        client_msg_id: String,
        reply_to: Option<i64>,
    ) -> ApiResult<Message> {
        let me = actor(ctx)?;
        let room = super::context::room_id(&room_id)?;
        let app = app(ctx);
        within(app.limits.send(me))?;
        let reply_to = reply_to.map(message_seq);
        let sent = app
            .commands
            .send_reply(room, me, &body, &client_msg_id, reply_to, &meta(ctx))
            .await
            .map_err(ApiError::from)?;
        if !sent.repeated && app.typing.stopped(room, me) {
            // Off the response path: the message is durable, the indicator is cosmetic.
            let relay = app.relay.clone();
            tokio::spawn(async move { publish_typing(&relay, room, me, false).await });
        }
        Ok(Message(LiveMessage {
            id: sent.message_id,
            room_id: room,
            seq: sent.seq,
            sender: sent.sender,
            body: sent.body.as_str().to_owned(),
            client_msg_id: sent.client_msg_id.as_str().to_owned(),
            sent_at: sent.sent_at,
            position: sent.position,
            reply_to: sent.reply_to,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
        }))
    }

    /// Replaces the body of one of the caller's messages (same rules as `sendMessage`); not
    /// a deleted one. Returns the message as it now is.
    async fn edit_message(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        seq: i64,
        body: String,
    ) -> ApiResult<Message> {
        change_message(ctx, room_id, seq, MessageChange::Edit(body)).await
    }

    /// Deletes a message (the sender, or the room's host or a moderator): its text is erased
    /// everywhere;
    /// it keeps its seq, with body "" and `deleted: true`.
    async fn delete_message(&self, ctx: &Context<'_>, room_id: ID, seq: i64) -> ApiResult<Message> {
        change_message(ctx, room_id, seq, MessageChange::Delete).await
    }

    /// Reacts to a message with an emoji (1–16 characters); the same emoji twice is a no-op.
    async fn react(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        seq: i64,
        emoji: String,
    ) -> ApiResult<Message> {
        change_message(ctx, room_id, seq, MessageChange::React(emoji, true)).await
    }

    /// Takes back a reaction; taking back one never given is a no-op.
    async fn unreact(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        seq: i64,
        emoji: String,
    ) -> ApiResult<Message> {
        change_message(ctx, room_id, seq, MessageChange::React(emoji, false)).await
    }

    /// Tells the room the caller is typing; it shows for about 5 s unless repeated.
    async fn typing(&self, ctx: &Context<'_>, room_id: ID) -> ApiResult<bool> {
        let me = actor(ctx)?;
        let room = super::context::room_id(&room_id)?;
        let app = app(ctx);
        require_member(app, room, me).await?;
        app.typing.started(room, me);
        publish_typing(&app.relay, room, me, true).await;
        Ok(true)
    }

    /// Role `admin`: an `ANNOUNCEMENT` notice to every connected user, on every instance
    /// (a stored event). Text 1–1000 characters, not blank.
    async fn announce(&self, ctx: &Context<'_>, text: String) -> ApiResult<bool> {
        let me = actor(ctx)?;
        app(ctx)
            .commands
            .announce(me, &text, &meta(ctx))
            .await
            .map_err(ApiError::from)?;
        Ok(true)
    }

    /// Role `admin`: an erasure request. The user's username and every message text they
    /// wrote become unreadable everywhere (history, `events`, exports, time travel); they can
    /// no longer sign in. Erasing an erased user is a no-op. Answers once the read models
    /// show it.
    async fn erase_user(&self, ctx: &Context<'_>, user_id: ID) -> ApiResult<bool> {
        let me = actor(ctx)?;
        let user = self::user_id(&user_id)?;
        let app = app(ctx);
        let is_admin = app
            .commands
            .has_role(me, parley_domain::Role::Admin)
            .await
            .map_err(ApiError::internal)?;
        if !is_admin {
            return Err(ApiError::Forbidden("only admins may erase users".to_owned()).into());
        }
        let position = app
            .commands
            .erase_user(user, Some(me), &meta(ctx))
            .await
            .map_err(ApiError::from)?;
        // Their tokens stop working here now (elsewhere within the known-user TTL).
        app.forget_user(user);
        projected_to(app, position, "an erasure").await;
        Ok(true)
    }

    /// Moves the caller's read cursor forward to `seq` (never back).
    async fn mark_read(&self, ctx: &Context<'_>, room_id: ID, seq: i64) -> ApiResult<Room> {
        let me = actor(ctx)?;
        let room = self::room_id(&room_id)?;
        let app = app(ctx);
        let Some((state, _)) = app
            .commands
            .room_state(room)
            .await
            .map_err(ApiError::internal)?
        else {
            return Err(ApiError::NotFound("no such room".to_owned()).into());
        };
        if !state.is_member(me) {
            return Err(ApiError::Forbidden("you are not a member of this room".to_owned()).into());
        }
        let last_seq = state.last_seq();
        let seq = match MessageSeq::try_from(seq) {
            Ok(seq) if seq <= last_seq => seq,
            _ => {
                return Err(ApiError::BadInput(format!(
                    "seq must be between 0 and {last_seq}, got {seq}"
                ))
                .into())
            }
        };
        fresh_room(app, room, |v| v.last_seq >= seq).await?;
        app.read_models
            .mark_read(room, me, seq)
            .await
            .map_err(ApiError::from)?;
        // The caller's other sessions keep their rooms list (`roomUpdates`) right.
        let changed = LiveEvent::RoomsChanged { room_id: room };
        crate::live::publish_ephemeral(&app.relay, vec![(Channel::User(me), changed)]).await;
        let view = fresh_room(app, room, |_| true).await?;
        with_last_message(ctx, Room::new(view)).await
    }
}

/// Runs a moderation step as the caller and answers with the room as it is after it.
async fn moderate(ctx: &Context<'_>, room_id: &ID, action: Moderation) -> ApiResult<Room> {
    let me = actor(ctx)?;
    let room = super::context::room_id(room_id)?;
    let app = app(ctx);
    let position = app
        .commands
        .moderate(room, me, action, &meta(ctx))
        .await
        .map_err(ApiError::from)?;
    projected_to(app, position, "a moderation step").await;
    let view = fresh_room(app, room, |_| true).await?;
    with_last_message(ctx, Room::new(view)).await
}

/// Blocks or unblocks `user_id` as the caller, once the read models show it.
async fn set_block(ctx: &Context<'_>, user_id: &ID, block: bool) -> ApiResult<bool> {
    let me = actor(ctx)?;
    let user = self::user_id(user_id)?;
    let app = app(ctx);
    let position = app
        .commands
        .set_block(me, user, block, &meta(ctx))
        .await
        .map_err(ApiError::from)?;
    projected_to(app, position, "a block").await;
    Ok(true)
}
