//! The HTTP surface: GraphQL over HTTP ([`graphql`]; over WebSocket, [`crate::ws`]; what the
//! two share, [`session`]), health, readiness and metrics, with tracing, CORS, request ids
//! and the body limit around everything.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tower_http::cors::CorsLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;

use crate::app::App;
use crate::ws::WsConfig;

pub mod graphql;
pub(crate) mod session;

pub use graphql::MAX_BODY;

/// How long `/readyz` waits for the store and the relay.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The metrics recorder of this process (installed once, shared by every app in it).
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Buckets make every histogram a Prometheus histogram (not a summary), so that
        // latencies can be aggregated across instances.
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first (an embedding program's).
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        describe();
        handle
    })
}

/// Histogram buckets, in seconds (latencies from 0.5 ms to 10 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// HELP text of every metric Parley exports.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "parley_http_requests_total",
        "HTTP requests answered, by method, route and status"
    );
    describe_histogram!(
        "parley_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by route"
    );
    describe_counter!(
        "parley_graphql_errors_total",
        "GraphQL errors returned, by extensions.code"
    );
    describe_histogram!(
        "parley_command_duration_seconds",
        Unit::Seconds,
        "Time to run a command on an aggregate, by aggregate type"
    );
    describe_counter!(
        "parley_command_conflicts_total",
        "Optimistic-concurrency conflicts retried, by aggregate type"
    );
    describe_counter!(
        "parley_write_turns_total",
        "Batches written alone (holding the log) after losing two races, by aggregate type"
    );
    describe_gauge!(
        "parley_active_subscriptions",
        "GraphQL subscriptions running now"
    );
    // Exported as 0 from the start rather than absent until the first subscription.
    metrics::gauge!("parley_active_subscriptions").increment(0.0);
    describe_gauge!(
        "parley_room_feeds",
        "Room subscriptions (messages, messageUpdates, typing, a room's notices) past their membership check"
    );
    metrics::gauge!("parley_room_feeds").increment(0.0);
    describe_gauge!(
        "parley_projection_lag_events",
        "Events not yet applied, by projection"
    );
    describe_gauge!(
        "parley_projection_lag_seconds",
        Unit::Seconds,
        "Age of the oldest event not yet applied, by projection"
    );
    describe_histogram!(
        "parley_batch_commands",
        "Commands carried out together in one group commit, by aggregate type"
    );
    describe_counter!(
        "parley_live_publisher_lagged_total",
        "Times the live publisher fell behind the projector and re-read from the log"
    );
    describe_counter!(
        "parley_relay_publish_errors_total",
        "Live events that could not be published to the relay"
    );
}

pub fn router(app: App) -> Router {
    router_with(app, WsConfig::default())
}

/// Everything, `/metrics` included.
pub fn router_with(app: App, ws: WsConfig) -> Router {
    api_router(app, ws, Metrics::Here)
}

/// Where `/metrics` is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metrics {
    /// On the API's address, beside GraphQL.
    Here,
    /// On an address of its own ([`metrics_router`]); the API's answers 404.
    Elsewhere,
}

/// `/metrics` alone, for an address only the operators' network reaches.
pub fn metrics_router(app: App) -> Router {
    prometheus();
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(app)
}

/// The API: GraphQL, health, readiness, the web client and (if [`Metrics::Here`]) metrics.
pub fn api_router(app: App, ws: WsConfig, metrics: Metrics) -> Router {
    prometheus();
    let request_id = HeaderName::from_static("x-request-id");
    let mut routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if metrics == Metrics::Here {
        routes = routes.route("/metrics", get(metrics_text));
    }
    routes
        .with_state(app.clone())
        .merge(graphql::routes(app, ws))
        .merge(crate::web::routes())
        .layer(DefaultBodyLimit::max(graphql::MAX_BODY))
        .layer(middleware::from_fn(count_requests))
        .layer(CorsLayer::permissive())
        // The access log: one line per request at `info` ("finished processing request"
        // with status and latency, in the request's span: method, path, request id).
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", method = %request.method(), uri = %request.uri().path(), request_id = %id)
                })
                .on_response(
                    DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(LatencyUnit::Micros),
                ),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(middleware::from_fn(drop_bad_request_id))
}

/// Longest client request id kept.
pub const MAX_REQUEST_ID: usize = 64;

/// Whether a client's `x-request-id` may be kept (logged, stored in event metadata, echoed):
/// 1–64 of `[A-Za-z0-9._:-]`.
pub fn valid_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Removes a client request id that is not [`valid_request_id`], so a fresh one is made.
async fn drop_bad_request_id(mut request: Request, next: Next) -> Response {
    let bad = request
        .headers()
        .get_all("x-request-id")
        .iter()
        .enumerate()
        .any(|(i, v)| i > 0 || !v.to_str().is_ok_and(valid_request_id));
    if bad {
        request.headers_mut().remove("x-request-id");
    }
    next.run(request).await
}

async fn count_requests(request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("parley_http_requests_total", "method" => method, "path" => path.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("parley_http_request_duration_seconds", "path" => path)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The process is up and serving HTTP.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The store and the relay answer: the instance can take traffic.
async fn readyz(State(app): State<App>) -> impl IntoResponse {
    let store = match tokio::time::timeout(READY_TIMEOUT, app.log.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!("no answer within {READY_TIMEOUT:?}")),
    };
    let relay = match tokio::time::timeout(READY_TIMEOUT, app.relay.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!("no answer within {READY_TIMEOUT:?}")),
    };
    let relay_kind = format!("{:?}", app.relay.kind()).to_lowercase();
    let body = json!({
        "status": if store.is_none() && relay.is_none() { "ready" } else { "unavailable" },
        "store": app.log.kind(),
        "store_ok": store.is_none(),
        "relay": relay_kind,
        "relay_ok": relay.is_none(),
    });
    if store.is_none() && relay.is_none() {
        (StatusCode::OK, Json(body))
    } else {
        tracing::warn!(store = ?store, relay = ?relay, "readiness check failed");
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

/// Prometheus text: requests, errors, command latency, subscriptions, projector lag.
async fn metrics_text(State(app): State<App>) -> impl IntoResponse {
    // No scan of the log per scrape: positions and partial indexes only.
    match app.read_models.lag_estimate().await {
        Ok(status) => {
            for projection in status {
                metrics::gauge!("parley_projection_lag_events", "projection" => projection.name.clone())
                    .set(projection.lag_events as f64);
                metrics::gauge!("parley_projection_lag_seconds", "projection" => projection.name)
                    .set(projection.lag_ms as f64 / 1000.0);
            }
        }
        Err(error) => tracing::warn!(%error, "projection status unavailable for /metrics"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        prometheus().render(),
    )
}
