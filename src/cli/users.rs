//! `parley users grant USERNAME ROLE` and `parley users erase USERNAME`: a `RoleGranted` or
//! `UserErased` event through the command layer.

use anyhow::Context;
use parley_domain::UserError;
use parley_projections::postgres::PgEventLog;

use super::{tool_pool, Failure};
use crate::commands::{CommandBus, CommandError, CommandMeta};
use crate::config::{EraseArgs, GrantArgs};
use crate::store::{EventLog, PostgresLog};

/// The user registered as `username` (from the log itself) and a command bus on the store.
async fn user_and_bus(
    options: sqlx::postgres::PgConnectOptions,
    username: &parley_domain::Username,
) -> Result<(parley_domain::UserId, CommandBus), Failure> {
    let pool = tool_pool(options).await?;
    let user = PgEventLog::new(pool.clone())
        .user_id(username.as_str())
        .await
        .context("looking up the user")?
        .with_context(|| format!("no user is registered as \"{username}\""))?;
    Ok((
        user,
        CommandBus::new(EventLog::postgres(PostgresLog::new(pool))),
    ))
}

pub(super) async fn grant(args: GrantArgs) -> Result<(), Failure> {
    let (options, username, role) = args.validate().map_err(Failure::Usage)?;
    let (user, bus) = user_and_bus(options, &username).await?;
    let meta = CommandMeta::system(format!("cli:users-grant:{}", uuid::Uuid::new_v4()));
    match bus.grant_role(user, role, &meta).await {
        Ok(()) => {
            println!("granted {role} to {username}");
            Ok(())
        }
        Err(CommandError::Rejected(UserError::AlreadyHasRole(role))) => {
            Err(anyhow::anyhow!("{username} already has the role {role}").into())
        }
        Err(error) => Err(anyhow::Error::new(error)
            .context(format!("granting {role} to {username}"))
            .into()),
    }
}

pub(super) async fn erase(args: EraseArgs) -> Result<(), Failure> {
    let (options, username) = args.validate().map_err(Failure::Usage)?;
    let (user, bus) = user_and_bus(options, &username).await?;
    let meta = CommandMeta::system(format!("cli:users-erase:{}", uuid::Uuid::new_v4()));
    bus.erase_user(user, None, &meta)
        .await
        .map_err(|error| anyhow::Error::new(error).context(format!("erasing {username}")))?;
    println!("erased user {user} (was {username})");
    Ok(())
}
