//! What GraphQL over HTTP (`super::graphql`) and over WebSocket (`crate::ws`) share: the
//! caller's user from a bearer token, the per-IP budget's refusal, GraphQL-shaped refusals
//! of requests that never ran, and the state their routes carry.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_graphql::dataloader::DataLoader;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use parley_domain::UserId;

use crate::app::App;
use crate::graphql::error::{rate_limited_refusal, refusal};
use crate::graphql::{ClientIp, ParleySchema, UserLoader};
use crate::ws::WsConfig;

#[derive(Clone)]
pub(crate) struct GraphqlState {
    pub(crate) app: App,
    pub(crate) schema: ParleySchema,
    pub(crate) ws: WsConfig,
}

pub(crate) fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    metrics::counter!("parley_graphql_errors_total", "code" => code.to_owned()).increment(1);
    (status, Json(refusal(code, message))).into_response()
}

/// The token of an `Authorization: Bearer …` header: `None` without one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<Result<&str, ()>> {
    let value = headers.get(header::AUTHORIZATION)?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(()),
    )
}

/// A whole request refused by the per-IP budget: HTTP 429 with `Retry-After`.
pub(crate) fn over_budget(refused: crate::limits::Refused) -> Response {
    metrics::counter!("parley_graphql_errors_total", "code" => "RATE_LIMITED").increment(1);
    let message = format!(
        "too many {} from this address; retry in {} ms",
        refused.what,
        refused.retry_after.as_millis().max(1)
    );
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(rate_limited_refusal(&message, refused.retry_after)),
    )
        .into_response();
    let seconds = refused.retry_after.as_secs() + u64::from(refused.retry_after.subsec_nanos() > 0);
    if let Ok(value) = seconds.max(1).to_string().parse() {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

pub(crate) fn ip_of(ip: Option<Extension<ClientIp>>) -> Option<ClientIp> {
    ip.map(|Extension(ip)| ip)
}

pub(crate) fn user_loader(app: &App) -> Arc<DataLoader<UserLoader>> {
    // No batching delay: the users one resolver pass asks for are batched anyway, and the
    // default 1 ms wait would add 1–2 ms to every request that returns a user.
    Arc::new(
        DataLoader::new(
            UserLoader::new(app.read_models.clone(), app.projected.clone()),
            tokio::spawn,
        )
        .delay(Duration::ZERO),
    )
}

/// The user a token names, if it verifies and that user exists here.
pub(crate) async fn token_user(app: &App, token: &str) -> Result<UserId, Response> {
    token_session(app, token).await.map(|(user, _expires)| user)
}

/// [`token_user`], with the moment the token expires.
pub(crate) async fn token_session(
    app: &App,
    token: &str,
) -> Result<(UserId, SystemTime), Response> {
    let (user, expires) = app
        .tokens
        .verify_session(token)
        .map_err(|_| unauthenticated("invalid or expired token"))?;
    match app.user_exists(user).await {
        Ok(true) => Ok((user, expires)),
        Ok(false) => Err(unauthenticated("invalid or expired token")),
        Err(error) => {
            tracing::warn!(%error, "cannot check a token's user");
            Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the store is unavailable right now; retry shortly",
            ))
        }
    }
}

/// Checks the bearer token of an HTTP request: `Ok(None)` when there is none, else the
/// response that refuses it.
pub(crate) async fn http_actor(app: &App, headers: &HeaderMap) -> Result<Option<UserId>, Response> {
    match bearer(headers) {
        None => Ok(None),
        Some(Ok(token)) => token_user(app, token).await.map(Some),
        Some(Err(())) => Err(unauthenticated(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

pub(crate) fn unauthenticated(reason: &str) -> Response {
    refuse(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", reason)
}
