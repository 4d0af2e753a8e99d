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
    /// Logged with the request id; the client sees only "internal error".
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadInput(_) => "BAD_USER_INPUT",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Conflict(_) => "CONFLICT",
            Self::Internal(_) => "INTERNAL",
        }
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::Internal(error.to_string())
    }

    /// The message clients see.
    pub fn message(&self) -> String {
        match self {
            Self::BadInput(m)
            | Self::Unauthenticated(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::Conflict(m) => m.clone(),
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
        async_graphql::Error::new(error.message()).extend_with(|_, e| e.set("code", code))
    }
}

impl From<RoomError> for ApiError {
    fn from(error: RoomError) -> Self {
        let message = error.to_string();
        match error {
            RoomError::RoomAlreadyExists | RoomError::AlreadyMember => Self::Conflict(message),
            RoomError::UnknownRoom => Self::NotFound("no such room".to_owned()),
            RoomError::NotMember => Self::Forbidden("you are not a member of this room".to_owned()),
            RoomError::InvalidName(_)
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
            UserError::InvalidUsername(_) | UserError::InvalidAnnouncement(_) => {
                Self::BadInput(message)
            }
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
