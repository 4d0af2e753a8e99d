//! User commands: register, grant a role, announce.

use chrono::Utc;
use parley_domain::{Role, User, UserCommand, UserError, UserId, Username};
use parley_projections::GlobalPosition;

use super::batch::{Batched, Collision};
use super::{execute, CommandBus, CommandError, CommandMeta};

impl Batched for User {
    fn on_unique_collision(command: &UserCommand) -> Collision<UserError> {
        match command {
            // The one unique key a user's events carry: the username.
            UserCommand::RegisterUser { username, .. } => match Username::parse(username) {
                Ok(username) => Collision::Refused(UserError::UsernameTaken(username)),
                Err(error) => Collision::Refused(UserError::InvalidUsername(error)),
            },
            // No other user event has a unique key; an unchanged user cannot collide.
            _ => Collision::Refused(UserError::AlreadyRegistered),
        }
    }
}

impl CommandBus {
    /// Registers a user whose password the caller has already hashed.
    pub async fn register_user(
        &self,
        username: &str,
        password_hash: String,
        meta: &CommandMeta,
    ) -> Result<UserId, CommandError<UserError>> {
        let user_id = UserId::new();
        let command = UserCommand::RegisterUser {
            user_id,
            username: username.to_owned(),
            password_hash,
            registered_at: Utc::now(),
        };
        execute(&self.users, user_id.to_string(), command, meta).await?;
        Ok(user_id)
    }

    pub async fn grant_role(
        &self,
        user: UserId,
        role: Role,
        meta: &CommandMeta,
    ) -> Result<(), CommandError<UserError>> {
        let command = UserCommand::GrantRole { role };
        execute(&self.users, user.to_string(), command, meta).await?;
        Ok(())
    }

    /// An erasure request for `user` (see `UserCommand::EraseUser`), by admin `by` or an
    /// operator (`None`). Returns the erasure's position (0 if the user was erased already).
    pub async fn erase_user(
        &self,
        user: UserId,
        by: Option<UserId>,
        meta: &CommandMeta,
    ) -> Result<GlobalPosition, CommandError<UserError>> {
        let command = UserCommand::EraseUser {
            by,
            erased_at: Utc::now(),
        };
        Ok(execute(&self.users, user.to_string(), command, meta)
            .await?
            .position)
    }

    /// `user` blocks (`true`) or unblocks `target`. Returns the change's position (0 when it
    /// changed nothing).
    pub async fn set_block(
        &self,
        user: UserId,
        target: UserId,
        block: bool,
        meta: &CommandMeta,
    ) -> Result<GlobalPosition, CommandError<UserError>> {
        let command = if block {
            UserCommand::BlockUser { user: target }
        } else {
            UserCommand::UnblockUser { user: target }
        };
        Ok(execute(&self.users, user.to_string(), command, meta)
            .await?
            .position)
    }

    /// An announcement by `admin` to every connected user.
    pub async fn announce(
        &self,
        admin: UserId,
        text: &str,
        meta: &CommandMeta,
    ) -> Result<(), CommandError<UserError>> {
        let command = UserCommand::Announce {
            text: text.to_owned(),
            made_at: Utc::now(),
        };
        execute(&self.users, admin.to_string(), command, meta).await?;
        Ok(())
    }
}
