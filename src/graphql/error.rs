//! API errors: every error a client sees carries `extensions.code`, mapped here in one place
//! from the layers below. Internal failures are logged with the request id and never echoed.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextRequest, NextSubscribe,
};
use async_graphql::{ErrorExtensions, Response, ServerError, Value};
use futures::stream::BoxStream;
use futures::StreamExt;
use parley_domain::{RoomError, UserError};
use parley_projections::ReadModelError;

use crate::commands::CommandError;

tokio::task_local! {
    /// The id of the request (HTTP) or connection (WebSocket) being served.
    pub static REQUEST_ID: String;
}

fn current_request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".to_owned())
}

/// An error as the API reports it. Deliberately not `Display`: it converts into
/// `async_graphql::Error` only through [`From`], which adds the code.
#[derive(Debug)]
pub enum ApiError {
    BadInput(String),
    Unauthenticated(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    /// Over a rate limit or a work budget: retry after the given time.
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    /// The store (or another service) cannot be reached or is overloaded: retryable.
    Unavailable(String),
    /// Logged with the request id; the client sees only "internal error".
    Internal(String),
}

/// Whether a failure of the layers below is an outage of the store (unreachable, pool
/// exhausted, a statement or lock timeout) rather than a bug: the client may retry.
/// The lower layers report errors as text, so this looks at the text sqlx produces.
pub fn is_outage(detail: &str) -> bool {
    const SIGNS: [&str; 9] = [
        "pool timed out",
        "closed pool",
        "error communicating with database",
        "connection refused",
        "connection reset",
        "broken pipe",
        "canceling statement due to statement timeout",
        "canceling statement due to lock timeout",
        "terminating connection",
    ];
    let detail = detail.to_ascii_lowercase();
    SIGNS.iter().any(|sign| detail.contains(sign))
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadInput(_) => "BAD_USER_INPUT",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Conflict(_) => "CONFLICT",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// A failure below the API: `UNAVAILABLE` when it is an outage of the store (logged,
    /// retryable), else `INTERNAL`.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        let detail = error.to_string();
        if is_outage(&detail) {
            tracing::warn!(request_id = %current_request_id(), %detail, "store unavailable");
            Self::Unavailable(
                "the store is unavailable or overloaded right now; retry shortly".to_owned(),
            )
        } else {
            Self::Internal(detail)
        }
    }

    /// Over a limit: `RATE_LIMITED` with `extensions.retryAfterMs`.
    pub fn rate_limited(what: &str, retry_after: std::time::Duration) -> Self {
        Self::RateLimited {
            message: format!(
                "too many {what}; retry in {} ms",
                retry_after.as_millis().max(1)
            ),
            retry_after,
        }
    }

    /// The message clients see.
    pub fn message(&self) -> String {
        match self {
            Self::BadInput(m)
            | Self::Unauthenticated(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::Unavailable(m) => m.clone(),
            Self::RateLimited { message, .. } => message.clone(),
            Self::Internal(_) => format!("internal error (request id {})", current_request_id()),
        }
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(error: ApiError) -> Self {
        if let ApiError::Internal(detail) = &error {
            tracing::error!(request_id = %current_request_id(), %detail, "internal error");
        }
        let code = error.code();
        let retry_after_ms = match &error {
            ApiError::RateLimited { retry_after, .. } => Some(
                u64::try_from(retry_after.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
            _ => None,
        };
        async_graphql::Error::new(error.message()).extend_with(|_, e| {
            e.set("code", code);
            if let Some(ms) = retry_after_ms {
                e.set("retryAfterMs", ms);
            }
        })
    }
}

impl From<RoomError> for ApiError {
    fn from(error: RoomError) -> Self {
        let message = error.to_string();
        match error {
            RoomError::RoomAlreadyExists | RoomError::AlreadyMember | RoomError::AlreadyInvited => {
                Self::Conflict(message)
            }
            RoomError::UnknownRoom => Self::NotFound("no such room".to_owned()),
            RoomError::NotMember => Self::Forbidden("you are not a member of this room".to_owned()),
            RoomError::NotSender
            | RoomError::NotAllowed
            | RoomError::NotHost
            | RoomError::NotModerator
            | RoomError::Outranked
            | RoomError::Banned
            | RoomError::NotInvited
            | RoomError::DirectRoom
            | RoomError::Blocked => Self::Forbidden(message),
            RoomError::AlreadyBanned | RoomError::NotBanned | RoomError::TargetNotMember => {
                Self::Conflict(message)
            }
            RoomError::NotToYourself
            | RoomError::DirectNeedsPeer
            | RoomError::DirectWithSelf
            | RoomError::InvalidReason(_) => Self::BadInput(message),
            RoomError::UnknownMessage(_) => Self::NotFound(message),
            RoomError::MessageDeleted(_) => Self::Conflict(message),
            RoomError::InvalidEmoji(_) | RoomError::InvalidReplyTo(_) => Self::BadInput(message),
            RoomError::InvalidName(_)
            | RoomError::InvalidTopic(_)
            | RoomError::InvalidBody(_)
            | RoomError::InvalidClientMsgId(_)
            | RoomError::UnknownParticipant(_)
            | RoomError::TooManyParticipants { .. } => Self::BadInput(message),
            RoomError::Service(e) => Self::internal(e),
        }
    }
}

impl From<UserError> for ApiError {
    fn from(error: UserError) -> Self {
        let message = error.to_string();
        match error {
            UserError::AlreadyRegistered
            | UserError::UsernameTaken(_)
            | UserError::AlreadyHasRole(_) => Self::Conflict(message),
            UserError::InvalidUsername(_)
            | UserError::InvalidAnnouncement(_)
            | UserError::BlockSelf
            | UserError::UnknownBlockee => Self::BadInput(message),
            UserError::NotAdmin => Self::Forbidden(message),
            UserError::UnknownUser => Self::NotFound(message),
            UserError::MissingPasswordHash | UserError::Service(_) => Self::internal(message),
        }
    }
}

impl<E: std::error::Error + Into<ApiError>> From<CommandError<E>> for ApiError {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(e) => e.into(),
            CommandError::Conflict => Self::Conflict(
                "the room kept changing while this request was retried; try again".to_owned(),
            ),
            CommandError::Store(e) => Self::internal(e),
        }
    }
}

impl From<crate::live::feed::FeedError> for ApiError {
    fn from(error: crate::live::feed::FeedError) -> Self {
        Self::internal(error)
    }
}

impl From<crate::live::BudgetSpent> for ApiError {
    fn from(error: crate::live::BudgetSpent) -> Self {
        Self::BadInput(error.to_string())
    }
}

impl From<ReadModelError> for ApiError {
    fn from(error: ReadModelError) -> Self {
        let message = error.to_string();
        match error {
            ReadModelError::Page(_)
            | ReadModelError::SeqOutOfRange { .. }
            | ReadModelError::UnknownProjection(_)
            | ReadModelError::Filter(_)
            | ReadModelError::NoEventLog => Self::BadInput(message),
            ReadModelError::RebuildRunning => Self::Conflict(message),
            ReadModelError::UnknownRoom => Self::NotFound("no such room".to_owned()),
            ReadModelError::Database(e) => Self::internal(e),
        }
    }
}

/// A resolver result.
pub type ApiResult<T> = Result<T, async_graphql::Error>;

/// Gives every error without a code one (parse and validation errors, limits), and counts
/// errors by code.
pub struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodesExtension)
    }
}

struct ErrorCodesExtension;

fn with_codes(mut response: Response) -> Response {
    for error in &mut response.errors {
        ensure_code(error);
    }
    response
}

/// Adds `BAD_USER_INPUT` to an error that has no code and counts it.
pub fn ensure_code(error: &mut ServerError) {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", "BAD_USER_INPUT");
    }
    let code = match extensions.get("code") {
        Some(Value::String(code)) => code.clone(),
        _ => "BAD_USER_INPUT".to_owned(),
    };
    metrics::counter!("parley_graphql_errors_total", "code" => code).increment(1);
}

#[async_trait::async_trait]
impl Extension for ErrorCodesExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        with_codes(next.run(ctx).await)
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream).map(with_codes).boxed()
    }
}

/// The error a response gets for a request refused before GraphQL execution (bad JSON,
/// oversized body, bad token…).
pub fn refusal(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "data": null,
        "errors": [{ "message": message, "extensions": { "code": code } }]
    })
}

/// A whole request refused for being over a rate limit (sent with HTTP 429).
pub fn rate_limited_refusal(message: &str, retry_after: std::time::Duration) -> serde_json::Value {
    let ms = u64::try_from(retry_after.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    serde_json::json!({
        "data": null,
        "errors": [{
            "message": message,
            "extensions": { "code": "RATE_LIMITED", "retryAfterMs": ms }
        }]
    })
}
