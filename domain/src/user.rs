//! The `User` aggregate: registration and roles.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::services::{ServiceError, UserServices};
use crate::values::{AnnouncementText, Username, ValueError};
use crate::EVENT_VERSION;

/// A role that widens what a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May read the global event log.
    Analyst,
    /// May read the event log and make announcements.
    Admin,
}

impl Role {
    /// Parses the lower-case name used on the command line and in the API.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "analyst" => Some(Self::Analyst),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Analyst => "analyst",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Commands the `User` aggregate accepts.
#[derive(Clone, Debug, PartialEq)]
pub enum UserCommand {
    /// Create the user. The password arrives already hashed (argon2, by the server).
    RegisterUser {
        user_id: UserId,
        username: String,
        password_hash: String,
        registered_at: DateTime<Utc>,
    },
    /// Give the user a role.
    GrantRole { role: Role },
    /// Say something to every connected user. Admins only.
    Announce {
        text: String,
        made_at: DateTime<Utc>,
    },
    /// An erasure request: the user's username and every message text they wrote become
    /// unreadable everywhere. `by`: the admin who asked (`None`: an operator's CLI). The API
    /// checks that `by` is an admin; erasing an erased user is a no-op.
    EraseUser {
        by: Option<UserId>,
        erased_at: DateTime<Utc>,
    },
    /// The user no longer receives `user`'s messages live, nor direct rooms from them.
    /// Blocking someone blocked already is a no-op.
    BlockUser { user: UserId },
    /// Takes a block back; unblocking someone not blocked is a no-op.
    UnblockUser { user: UserId },
}

/// Events of the `User` aggregate. A persisted contract: names and fields never change
/// meaning; a new shape gets a new version and an upcaster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    /// A user registered. v1.0.
    UserRegistered {
        user_id: UserId,
        username: Username,
        /// An argon2 PHC string; never the password itself.
        password_hash: String,
        registered_at: DateTime<Utc>,
    },
    /// A user was given a role. v1.0.
    RoleGranted { role: Role },
    /// An admin made an announcement to every connected user. v1.0.
    AnnouncementMade {
        text: AnnouncementText,
        made_at: DateTime<Utc>,
    },
    /// The user was erased: their username and message texts are erased from the store when
    /// this is written; the user can no longer sign in. v1.0.
    UserErased {
        erased_by: Option<UserId>,
        erased_at: DateTime<Utc>,
    },
    /// The user blocked another. v1.0.
    UserBlocked { user_id: UserId },
    /// The user took a block back. v1.0.
    UserUnblocked { user_id: UserId },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "UserRegistered",
            Self::RoleGranted { .. } => "RoleGranted",
            Self::AnnouncementMade { .. } => "AnnouncementMade",
            Self::UserErased { .. } => "UserErased",
            Self::UserBlocked { .. } => "UserBlocked",
            Self::UserUnblocked { .. } => "UserUnblocked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION.to_owned()
    }
}

/// Why a `User` command was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UserError {
    /// This user id is already registered.
    #[error("user is already registered")]
    AlreadyRegistered,
    /// Another user has this username.
    #[error("username {0} is taken")]
    UsernameTaken(Username),
    /// The username breaks a rule.
    #[error("{0}")]
    InvalidUsername(ValueError),
    /// The password hash is empty: the server must hash before it registers.
    #[error("password hash is missing")]
    MissingPasswordHash,
    /// The command names a user that was never registered.
    #[error("unknown user")]
    UnknownUser,
    /// Only admins may announce.
    #[error("only admins may make announcements")]
    NotAdmin,
    /// The announcement text breaks a rule.
    #[error("{0}")]
    InvalidAnnouncement(ValueError),
    /// The user already has this role.
    #[error("user already has role {0}")]
    AlreadyHasRole(Role),
    /// Blocking oneself.
    #[error("you may not block yourself")]
    BlockSelf,
    /// Blocking a user who was never registered.
    #[error("no such user to block")]
    UnknownBlockee,
    /// A lookup the rule needs failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// A registered user. State is small: identity and roles.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    id: Option<UserId>,
    username: Option<Username>,
    roles: BTreeSet<Role>,
    /// Snapshots older than the field load it false; replaying the events sets it.
    #[serde(default)]
    erased: bool,
    /// Users this one blocks (snapshots older than the field load it empty).
    #[serde(default)]
    blocked: BTreeSet<UserId>,
}

impl User {
    pub fn id(&self) -> Option<UserId> {
        self.id
    }

    pub fn username(&self) -> Option<&Username> {
        self.username.as_ref()
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the user was erased.
    pub fn is_erased(&self) -> bool {
        self.erased
    }

    /// Whether this user blocks `user`.
    pub fn blocks(&self, user: UserId) -> bool {
        self.blocked.contains(&user)
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = Arc<dyn UserServices>;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            UserCommand::RegisterUser {
                user_id,
                username,
                password_hash,
                registered_at,
            } => {
                if self.id.is_some() {
                    return Err(UserError::AlreadyRegistered);
                }
                let username = Username::parse(&username).map_err(UserError::InvalidUsername)?;
                if password_hash.trim().is_empty() {
                    return Err(UserError::MissingPasswordHash);
                }
                if services.username_taken(&username).await? {
                    return Err(UserError::UsernameTaken(username));
                }
                let event = UserEvent::UserRegistered {
                    user_id,
                    username,
                    password_hash,
                    registered_at,
                };
                sink.write(event, self).await;
            }
            UserCommand::GrantRole { role } => {
                if self.id.is_none() {
                    return Err(UserError::UnknownUser);
                }
                if self.roles.contains(&role) {
                    return Err(UserError::AlreadyHasRole(role));
                }
                sink.write(UserEvent::RoleGranted { role }, self).await;
            }
            UserCommand::Announce { text, made_at } => {
                if self.id.is_none() {
                    return Err(UserError::UnknownUser);
                }
                if !self.roles.contains(&Role::Admin) {
                    return Err(UserError::NotAdmin);
                }
                let text =
                    AnnouncementText::parse(&text).map_err(UserError::InvalidAnnouncement)?;
                sink.write(UserEvent::AnnouncementMade { text, made_at }, self)
                    .await;
            }
            UserCommand::EraseUser { by, erased_at } => {
                if self.id.is_none() {
                    return Err(UserError::UnknownUser);
                }
                if !self.erased {
                    let event = UserEvent::UserErased {
                        erased_by: by,
                        erased_at,
                    };
                    sink.write(event, self).await;
                }
            }
            UserCommand::BlockUser { user } => {
                let me = self.id.ok_or(UserError::UnknownUser)?;
                if user == me {
                    return Err(UserError::BlockSelf);
                }
                if !self.blocked.contains(&user) {
                    if !services.user_exists(user).await? {
                        return Err(UserError::UnknownBlockee);
                    }
                    sink.write(UserEvent::UserBlocked { user_id: user }, self)
                        .await;
                }
            }
            UserCommand::UnblockUser { user } => {
                if self.id.is_none() {
                    return Err(UserError::UnknownUser);
                }
                if self.blocked.contains(&user) {
                    sink.write(UserEvent::UserUnblocked { user_id: user }, self)
                        .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered {
                user_id, username, ..
            } => {
                self.id = Some(user_id);
                self.username = Some(username);
            }
            UserEvent::RoleGranted { role } => {
                self.roles.insert(role);
            }
            UserEvent::AnnouncementMade { .. } => {}
            UserEvent::UserErased { .. } => {
                self.erased = true;
                self.username = None;
            }
            UserEvent::UserBlocked { user_id } => {
                self.blocked.insert(user_id);
            }
            UserEvent::UserUnblocked { user_id } => {
                self.blocked.remove(&user_id);
            }
        }
    }
}
