//! The HTTP surface: health and readiness (GraphQL joins it in its own module).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::app::App;

/// How long `/readyz` waits for the store before calling it unreachable.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(app)
}

/// The process is up and serving HTTP.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The store answers: the instance can take traffic.
async fn readyz(State(app): State<App>) -> impl IntoResponse {
    let store = match tokio::time::timeout(READY_TIMEOUT, app.log.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {READY_TIMEOUT:?}")),
    };
    match store {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "store": app.log.kind() })),
        ),
        Err(reason) => {
            tracing::warn!(%reason, "readiness check failed: store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({ "status": "unavailable", "store": app.log.kind(), "reason": "store unreachable" }),
                ),
            )
        }
    }
}
