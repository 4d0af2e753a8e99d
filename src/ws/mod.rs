//! GraphQL over WebSocket (`GET /graphql/ws`): the upgrade, its token and budget checks, and
//! the socket's life (the frames themselves: [`pump`]). async-graphql speaks both protocols
//! (`graphql-transport-ws`, legacy `graphql-ws`); this module pumps frames around it to add
//! what it lacks: close code 4403 for a missing or bad token, 4408 when `connection_init`
//! does not come, 4401 when the token expires (a `ping` with a fresh token extends it),
//! server pings and an idle timeout, clean closes (a client's close answered, 1001 at
//! shutdown), frames coalesced into one write, and presence heartbeats for the signed-in
//! user.

use std::time::Duration;

use async_graphql::http::{WebSocketProtocols, ALL_WEBSOCKET_PROTOCOLS};
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;

use crate::graphql::error::REQUEST_ID;
use crate::graphql::ClientIp;
use crate::http::session::{bearer, ip_of, over_budget, refuse, GraphqlState};
use crate::http::MAX_BODY;

mod pump;

use pump::pump;

/// WebSocket limits.
#[derive(Clone, Debug)]
pub struct WsConfig {
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// How long a client has to send `connection_init`.
    pub init_timeout: Duration,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_subscriptions: 100,
            init_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
        }
    }
}

/// `GET /graphql/ws`: the WebSocket upgrade.
pub(crate) async fn websocket(
    State(state): State<GraphqlState>,
    ip: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let ip = ip_of(ip);
    if let Err(refused) = state.app.limits.request(ip.map(|ip| ip.0)) {
        return over_budget(refused);
    }
    let protocol = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|list| {
            list.split(',')
                .find_map(|p| p.trim().parse::<WebSocketProtocols>().ok())
        });
    let Some(protocol) = protocol else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "ask for subprotocol graphql-transport-ws (or legacy graphql-ws)",
        );
    };
    let header_token = bearer(&headers).map(|t| t.map(str::to_owned));
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        // Idle connections are the common case: a small read buffer (the default 128 KiB
        // made an idle subscribed connection cost ~155 KiB; 4 KiB brought it to ~27 KiB, and
        // 1 KiB saves 3 KiB more: what clients send is small, and a larger frame grows the
        // buffer as it arrives), and the same 1 MiB cap on a message as on an HTTP body.
        .read_buffer_size(1024)
        .max_message_size(MAX_BODY)
        .max_frame_size(MAX_BODY)
        .on_upgrade(move |socket| serve_socket(socket, protocol, state, header_token, ip))
}

/// The token a `connection_init` payload carries: `{ token }`, Apollo's `{ authToken }`, or
/// an `Authorization` field (`Bearer <token>` or the bare token), also inside `headers`.
fn init_token(payload: &serde_json::Value) -> Option<String> {
    let field = |object: &serde_json::Value, name: &str| {
        object
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let authorization = |object: &serde_json::Value| {
        field(object, "Authorization")
            .or_else(|| field(object, "authorization"))
            .map(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .map_or_else(|| v.clone(), |t| t.trim().to_owned())
            })
    };
    field(payload, "token")
        .or_else(|| field(payload, "authToken"))
        .or_else(|| authorization(payload))
        .or_else(|| payload.get("headers").and_then(authorization))
}

async fn serve_socket(
    socket: WebSocket,
    protocol: WebSocketProtocols,
    state: GraphqlState,
    header_token: Option<Result<String, ()>>,
    ip: Option<ClientIp>,
) {
    let connection_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("websocket", connection = %connection_id);
    let sockets = state.app.sockets.clone();
    let pumped = pump(
        socket,
        protocol,
        state,
        header_token,
        ip,
        connection_id.clone(),
    );
    let pumped = REQUEST_ID.scope(connection_id, tracing::Instrument::instrument(pumped, span));
    sockets.track(pumped).await;
}
