//! GraphQL over HTTP (`POST /graphql`, `GET /graphql`) and WebSocket (`GET /graphql/ws`).
//!
//! HTTP: the body is read here (not by async-graphql's extractor) so that the 1 MiB limit,
//! malformed JSON and bad tokens all get a GraphQL-shaped error with `extensions.code`.
//! Mutations are refused over GET.
//!
//! WebSocket: async-graphql speaks both protocols (`graphql-transport-ws`, legacy
//! `graphql-ws`); this module pumps frames around it to add what it lacks: close code 4403
//! for a missing or bad token, 4408 when `connection_init` does not come, server pings and an
//! idle timeout, and presence heartbeats for the signed-in user.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_graphql::dataloader::DataLoader;
use async_graphql::http::{WebSocketProtocols, WsMessage, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
use async_graphql::{BatchRequest, Data};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query as UrlQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use parley_domain::UserId;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::context::{Actor, ClientIp, RequestId, SubscriptionBudget};
use super::conventions;
use super::error::{rate_limited_refusal, refusal, REQUEST_ID};
use super::loaders::UserLoader;
use super::ParleySchema;
use crate::app::App;

/// Largest request body, for GraphQL too.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most operations in one batched request.
const MAX_BATCH: usize = 10;

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

#[derive(Clone)]
struct GraphqlState {
    app: App,
    schema: ParleySchema,
    ws: WsConfig,
}

/// The GraphQL routes.
pub fn routes(app: App, ws: WsConfig) -> Router {
    let state = GraphqlState {
        schema: super::schema(app.clone()),
        app,
        ws,
    };
    Router::new()
        .route("/graphql", get(get_graphql).post(post_graphql))
        .route("/graphql/ws", get(websocket))
        .route("/schema.graphql", get(schema_sdl))
        .route("/graphql/stream", axum::routing::post(sse))
        .with_state(state)
}

/// `GET /schema.graphql`: the SDL (the same text as the checked-in `schema.graphql`).
async fn schema_sdl() -> Response {
    static SDL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        SDL.get_or_init(super::sdl).clone(),
    )
        .into_response()
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    metrics::counter!("parley_graphql_errors_total", "code" => code.to_owned()).increment(1);
    (status, Json(refusal(code, message))).into_response()
}

/// The token of an `Authorization: Bearer …` header: `None` without one.
fn bearer(headers: &HeaderMap) -> Option<Result<&str, ()>> {
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

/// The client's request id if it is a sane one (1–64 of `[A-Za-z0-9._:-]`), else a new
/// UUID: it is stored in every event's metadata and written to logs.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| crate::http::valid_request_id(id))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// A whole request refused by the per-IP budget: HTTP 429 with `Retry-After`.
fn over_budget(refused: crate::limits::Refused) -> Response {
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

fn ip_of(ip: Option<Extension<ClientIp>>) -> Option<ClientIp> {
    ip.map(|Extension(ip)| ip)
}

fn user_loader(app: &App) -> Arc<DataLoader<UserLoader>> {
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
async fn token_user(app: &App, token: &str) -> Result<UserId, Response> {
    token_session(app, token).await.map(|(user, _expires)| user)
}

/// [`token_user`], with the moment the token expires.
async fn token_session(app: &App, token: &str) -> Result<(UserId, SystemTime), Response> {
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
async fn http_actor(app: &App, headers: &HeaderMap) -> Result<Option<UserId>, Response> {
    match bearer(headers) {
        None => Ok(None),
        Some(Ok(token)) => token_user(app, token).await.map(Some),
        Some(Err(())) => Err(unauthenticated(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

fn unauthenticated(reason: &str) -> Response {
    refuse(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", reason)
}

/// The media type of the GraphQL-over-HTTP spec; a client that accepts it gets it, with 4xx
/// statuses for requests that could not run (parse and validation errors).
const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

fn wants_graphql_response(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| p.replace(' ', "") == "q=0");
            media.eq_ignore_ascii_case(GRAPHQL_RESPONSE) && !refused
        })
}

/// A response that never ran: no data, errors without a path, and a request-level code.
fn is_request_error(response: &async_graphql::Response) -> bool {
    !response.errors.is_empty()
        && response.data == async_graphql::Value::Null
        && response.errors.iter().all(|error| {
            error.path.is_empty()
                && matches!(
                    error.extensions.as_ref().and_then(|e| e.get("code")),
                    Some(async_graphql::Value::String(code))
                        if code == conventions::PARSE_FAILED
                            || code == conventions::VALIDATION_FAILED
                            || code == "BAD_USER_INPUT"
                )
        })
}

/// The top-level field names of every operation in `query` (`None` when it does not parse or
/// selects through a fragment spread).
fn top_level_fields(query: &str) -> Option<Vec<String>> {
    let document = async_graphql::parser::parse_query(query).ok()?;
    let mut names = Vec::new();
    for (_, operation) in document.operations.iter() {
        for item in &operation.node.selection_set.node.items {
            match &item.node {
                Selection::Field(field) => names.push(field.node.name.node.to_string()),
                _ => return None,
            }
        }
    }
    Some(names)
}

/// Operations that work without signing in, for which a stale `Authorization` header is
/// ignored rather than refused: `login`, `register`, `__typename` and introspection.
fn needs_no_token(request: &async_graphql::Request) -> bool {
    top_level_fields(&request.query).is_some_and(|names| {
        !names.is_empty()
            && names.iter().all(|name| {
                matches!(
                    name.as_str(),
                    "login" | "register" | "__typename" | "__schema" | "__type"
                )
            })
    })
}

/// APQ registrations of long query texts run but are not kept (bounds the cache's memory).
fn limit_persisted(mut request: async_graphql::Request) -> async_graphql::Request {
    if request.query.len() > super::MAX_PERSISTED_QUERY {
        request.extensions.remove("persistedQuery");
    }
    request
}

async fn execute(
    state: &GraphqlState,
    request: BatchRequest,
    actor: Option<UserId>,
    ip: Option<ClientIp>,
    headers: &HeaderMap,
    id: String,
) -> Response {
    let request = match request {
        BatchRequest::Single(one) => BatchRequest::Single(limit_persisted(one)),
        BatchRequest::Batch(many) => {
            BatchRequest::Batch(many.into_iter().map(limit_persisted).collect())
        }
    };
    let mut request = request
        .data(RequestId(id.clone()))
        .data(user_loader(&state.app));
    if let Some(actor) = actor {
        request = request.data(Actor(actor));
    }
    if let Some(ip) = ip {
        request = request.data(ip);
    }
    let response = REQUEST_ID
        .scope(id, state.schema.execute_batch(request))
        .await;
    let cache = response.cache_control().value();
    let mut http = if wants_graphql_response(headers) {
        // Serialized straight from the response (a `serde_json::Value` would sort the keys).
        let (status, body) = match &response {
            async_graphql::BatchResponse::Single(one) if is_request_error(one) => (
                StatusCode::BAD_REQUEST,
                serde_json::to_vec(&serde_json::json!({ "errors": one.errors })),
            ),
            _ => (StatusCode::OK, serde_json::to_vec(&response)),
        };
        let body = body.unwrap_or_else(|error| {
            serde_json::to_vec(&refusal(
                "INTERNAL",
                &format!("response not encoded: {error}"),
            ))
            .unwrap_or_default()
        });
        let mut http = (status, body).into_response();
        http.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(GRAPHQL_RESPONSE),
        );
        http
    } else {
        Json(&response).into_response()
    };
    if let Some(cache) = cache {
        if let Ok(value) = cache.parse() {
            http.headers_mut().insert(header::CACHE_CONTROL, value);
        }
    }
    http
}

/// `POST /graphql`: queries and mutations.
async fn post_graphql(
    State(state): State<GraphqlState>,
    ip: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ip = ip_of(ip);
    if let Err(refused) = state.app.limits.request(ip.map(|ip| ip.0)) {
        return over_budget(refused);
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BAD_USER_INPUT",
                "request body exceeds 1 MiB",
            )
        }
        Err(rejection) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &rejection.body_text(),
            )
        }
    };
    let request: BatchRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &format!("the body is not a GraphQL request in JSON: {error}"),
            )
        }
    };
    if let BatchRequest::Batch(batch) = &request {
        if batch.len() > MAX_BATCH || batch.is_empty() {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &format!("a batch holds 1 to {MAX_BATCH} operations"),
            );
        }
        let queries: Vec<&str> = batch.iter().map(|r| r.query.as_str()).collect();
        if let Err(message) = super::guard::check_batch(&queries) {
            return refuse(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", &message);
        }
    }
    let actor = match http_actor(&state.app, &headers).await {
        Ok(actor) => actor,
        Err(_) if request.iter().all(needs_no_token) => None,
        Err(refused) => return refused,
    };
    execute(&state, request, actor, ip, &headers, request_id(&headers)).await
}

/// `POST /graphql/stream`: GraphQL over Server-Sent Events, the `graphql-sse` protocol in
/// its "distinct connections" mode: one request per operation, answered with `next` events
/// (one per result: one for a query or mutation, one per event for a subscription), then
/// `complete`. Same schema, limits and bearer-token auth as `POST /graphql`.
async fn sse(
    State(state): State<GraphqlState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};

    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BAD_USER_INPUT",
                "request body exceeds 1 MiB",
            )
        }
        Err(rejection) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &rejection.body_text(),
            )
        }
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &format!("the body is not a GraphQL request in JSON: {error}"),
            )
        }
    };
    let actor = match http_actor(&state.app, &headers).await {
        Ok(actor) => actor,
        Err(_) if needs_no_token(&request) => None,
        Err(refused) => return refused,
    };
    let mut request = limit_persisted(request)
        .data(RequestId(request_id(&headers)))
        .data(user_loader(&state.app))
        .data(SubscriptionBudget::new(state.ws.max_subscriptions));
    if let Some(actor) = actor {
        request = request.data(Actor(actor));
    }
    let results = state.schema.execute_stream(request).map(|response| {
        Ok::<_, std::convert::Infallible>(
            Event::default()
                .event("next")
                .json_data(&response)
                .unwrap_or_else(|_| Event::default().event("next").data("{}")),
        )
    });
    let complete = futures::stream::once(async { Ok(Event::default().event("complete").data("")) });
    Sse::new(results.chain(complete))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Whether the operation a GET request would run is a query.
fn is_query(request: &async_graphql::Request) -> Result<bool, String> {
    let document = async_graphql::parser::parse_query(&request.query).map_err(|e| e.to_string())?;
    let kind = match (&document.operations, request.operation_name.as_deref()) {
        (DocumentOperations::Single(op), _) => Some(op.node.ty),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| op.node.ty),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().map(|op| op.node.ty)
        }
        (DocumentOperations::Multiple(_), None) => None,
    };
    Ok(kind.is_none_or(|ty| ty == OperationType::Query))
}

/// `GET /graphql`: GraphiQL in a browser, or a query from URL parameters.
async fn get_graphql(
    State(state): State<GraphqlState>,
    ip: Option<Extension<ClientIp>>,
    headers: HeaderMap,
    UrlQuery(params): UrlQuery<std::collections::HashMap<String, String>>,
) -> Response {
    let ip = ip_of(ip);
    if !params.contains_key("query") {
        // GraphiQL, from the embedded assets (no CDN).
        return crate::web::asset("graphiql.html");
    }
    let query = serde_urlencoded::to_string(&params).unwrap_or_default();
    let request = match async_graphql::http::parse_query_string(&query) {
        Ok(request) => request,
        Err(error) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &error.to_string(),
            )
        }
    };
    match is_query(&request) {
        Ok(true) => {}
        Ok(false) => return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_USER_INPUT",
            "mutations and subscriptions are not accepted over GET: use POST (or the WebSocket)",
        ),
        Err(error) => return refuse(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", &error),
    }
    if let Err(refused) = state.app.limits.request(ip.map(|ip| ip.0)) {
        return over_budget(refused);
    }
    let actor = match http_actor(&state.app, &headers).await {
        Ok(actor) => actor,
        Err(_) if needs_no_token(&request) => None,
        Err(refused) => return refused,
    };
    execute(
        &state,
        BatchRequest::Single(request),
        actor,
        ip,
        &headers,
        request_id(&headers),
    )
    .await
}

/// `GET /graphql/ws`: the WebSocket upgrade.
async fn websocket(
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
        // made an idle subscribed connection cost ~155 KiB; 4 KiB brings it to ~27 KiB), and
        // the same 1 MiB cap on a message as on an HTTP body.
        .read_buffer_size(4 * 1024)
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

/// Close codes of the graphql-transport-ws protocol.
const UNAUTHORIZED: u16 = 4401;
const FORBIDDEN: u16 = 4403;
const INIT_TIMEOUT: u16 = 4408;
const SUBSCRIBER_EXISTS: u16 = 4409;

/// The `type` and `id` of a graphql-transport-ws message (the rest is not read here).
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
}

/// What graphql-transport-ws asks of the server that async-graphql does not do: a
/// `subscribe` before `connection_init` closes 4401, a second `subscribe` with an id in use
/// closes 4409. Tracks the ids in use.
#[derive(Default)]
struct ProtocolRules {
    init_received: bool,
    active: std::collections::HashSet<String>,
}

impl ProtocolRules {
    /// A client frame: `Err` with the close frame it earns.
    fn client(&mut self, text: &[u8]) -> Result<(), Message> {
        let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(text) else {
            return Ok(()); // async-graphql answers malformed messages itself
        };
        match (envelope.kind.as_ref(), envelope.id) {
            ("connection_init", _) => self.init_received = true,
            ("subscribe", _) if !self.init_received => {
                return Err(close(UNAUTHORIZED, "Unauthorized"));
            }
            ("subscribe", Some(id)) if !self.active.insert(id.clone().into_owned()) => {
                return Err(close(
                    SUBSCRIBER_EXISTS,
                    &format!("Subscriber for {id} already exists"),
                ));
            }
            ("complete", Some(id)) => {
                self.active.remove(id.as_ref());
            }
            _ => {}
        }
        Ok(())
    }

    /// A server frame: a finished operation frees its id.
    fn server(&mut self, text: &str) {
        if !(text.starts_with("{\"type\":\"complete\"") || text.starts_with("{\"type\":\"error\""))
        {
            return;
        }
        if let Ok(Envelope { id: Some(id), .. }) = serde_json::from_str::<Envelope<'_>>(text) {
            self.active.remove(id.as_ref());
        }
    }
}

/// At most this many frames are coalesced into one write (then the pump looks at the
/// client's side again).
const MAX_FRAMES_PER_WRITE: usize = 64;

/// How long a closing socket waits for the client's answering close frame.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

/// Sends `frame` (a close) and waits briefly for the client's close frame, so both sides
/// see a clean close; whatever else the client sends meanwhile is dropped.
async fn close_with(
    sink: &mut SplitSink<WebSocket, Message>,
    source: &mut SplitStream<WebSocket>,
    frame: Message,
) {
    if sink.send(frame).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
        while let Some(Ok(message)) = source.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// When a token expires, as a tokio deadline.
fn deadline(expires: SystemTime) -> tokio::time::Instant {
    let left = expires
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}

/// The fresh token a graphql-transport-ws `ping` carries (`{"type":"ping","payload":
/// {"token":…}}`, same fields as `connection_init`): the client re-authenticates on an open
/// socket before its token expires.
fn refreshed_token(frame: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Ping {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        payload: serde_json::Value,
    }
    let ping = serde_json::from_slice::<Ping>(frame).ok()?;
    if ping.kind != "ping" {
        return None;
    }
    init_token(&ping.payload)
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
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

async fn pump(
    socket: WebSocket,
    protocol: WebSocketProtocols,
    state: GraphqlState,
    header_token: Option<Result<String, ()>>,
    ip: Option<ClientIp>,
    connection_id: String,
) {
    let (mut sink, mut source) = socket.split();
    let mut rules = (protocol == WebSocketProtocols::GraphQLWS).then(ProtocolRules::default);
    let (to_graphql, from_client) = mpsc::channel::<Bytes>(32);
    let refused = Arc::new(AtomicBool::new(false));
    let (signed_in_tx, mut signed_in) = mpsc::channel::<(UserId, SystemTime)>(1);

    let init = {
        let app = state.app.clone();
        let refused = refused.clone();
        let ws = state.ws.clone();
        let connection_id = connection_id.clone();
        move |payload: serde_json::Value| async move {
            let token = init_token(&payload).or_else(|| header_token.and_then(Result::ok));
            let session = match token.as_deref() {
                Some(token) => token_session(&app, token).await.ok(),
                None => None,
            };
            let Some((actor, expires)) = session else {
                refused.store(true, Ordering::SeqCst);
                return Err(async_graphql::Error::new(
                    "Forbidden: missing or invalid token",
                ));
            };
            let _ = signed_in_tx.send((actor, expires)).await;
            let mut data = Data::default();
            data.insert(Actor(actor));
            data.insert(RequestId(connection_id));
            data.insert(user_loader(&app));
            data.insert(SubscriptionBudget::new(ws.max_subscriptions));
            if let Some(ip) = ip {
                data.insert(ip);
            }
            Ok(data)
        }
    };
    let ws_protocol = protocol;
    let mut graphql = async_graphql::http::WebSocket::new(
        state.schema.clone(),
        ReceiverStream::new(from_client),
        ws_protocol,
    )
    .on_connection_init(init);

    let mut ping = tokio::time::interval(state.ws.ping_interval);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let init_deadline = tokio::time::sleep(state.ws.init_timeout);
    tokio::pin!(init_deadline);
    let mut user: Option<UserId> = None;
    let mut heartbeat = tokio::time::interval(state.app.presence.ttl() / 3);
    // The token's expiry, once signed in (a `ping` with a fresh token moves it).
    let expiry = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(expiry);
    let closing = state.app.sockets.closing();
    tokio::pin!(closing);

    loop {
        tokio::select! {
            frame = source.next() => {
                let Some(Ok(frame)) = frame else { break };
                last_heard = tokio::time::Instant::now();
                let payload = match frame {
                    Message::Text(text) => Some(Bytes::from(text.as_str().to_owned())),
                    Message::Binary(bytes) => Some(bytes),
                    Message::Close(_) => {
                        // tungstenite queued the answering close frame; send it.
                        let _ = sink.flush().await;
                        break;
                    }
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(payload) = payload {
                    if let Some(Err(refusal)) = rules.as_mut().map(|r| r.client(&payload)) {
                        close_with(&mut sink, &mut source, refusal).await;
                        break;
                    }
                    if let (Some(signed_in), Some(token)) = (user, refreshed_token(&payload)) {
                        match token_session(&state.app, &token).await {
                            Ok((same, expires)) if same == signed_in => {
                                expiry.as_mut().reset(deadline(expires));
                            }
                            _ => {
                                let refusal = close(FORBIDDEN, "Forbidden: invalid token");
                                close_with(&mut sink, &mut source, refusal).await;
                                break;
                            }
                        }
                    }
                    if to_graphql.send(payload).await.is_err() { break; }
                }
            }
            out = graphql.next() => {
                let mut next = out;
                let mut written = 0;
                // Every frame that is ready now goes out in one write (one syscall, not one
                // per frame: a subscriber of a busy room gets many messages at once).
                let ended = loop {
                    let Some(out) = next else { break true };
                    if let (Some(rules), WsMessage::Text(text)) = (rules.as_mut(), &out) {
                        rules.server(text);
                    }
                    let message = match out {
                        WsMessage::Text(text) => Message::Text(text.into()),
                        WsMessage::Close(code, reason) => {
                            let code = if refused.load(Ordering::SeqCst) { FORBIDDEN } else { code };
                            Message::Close(Some(CloseFrame { code, reason: reason.into() }))
                        }
                    };
                    if matches!(message, Message::Close(_)) {
                        close_with(&mut sink, &mut source, message).await;
                        break true;
                    }
                    if sink.feed(message).await.is_err() { break true; }
                    written += 1;
                    if refused.load(Ordering::SeqCst) {
                        // Legacy protocol: the error went out as a message; now close.
                        close_with(&mut sink, &mut source, close(FORBIDDEN, "Forbidden")).await;
                        break true;
                    }
                    if written == MAX_FRAMES_PER_WRITE {
                        break false;
                    }
                    match graphql.next().now_or_never() {
                        Some(more) => next = more,
                        None => break false,
                    }
                };
                if ended || sink.flush().await.is_err() { break; }
            }
            Some((actor, expires)) = signed_in.recv() => {
                user = Some(actor);
                expiry.as_mut().reset(deadline(expires));
                let was_online = state.app.presence.is_online(actor).await.unwrap_or(true);
                touch_presence(&state.app, actor, &connection_id).await;
                if !was_online {
                    crate::live::publish_presence(&state.app, actor, true).await;
                }
            }
            _ = heartbeat.tick(), if user.is_some() => {
                if let Some(actor) = user {
                    touch_presence(&state.app, actor, &connection_id).await;
                }
            }
            () = &mut init_deadline, if user.is_none() => {
                let timeout = close(INIT_TIMEOUT, "Connection initialisation timeout");
                close_with(&mut sink, &mut source, timeout).await;
                break;
            }
            () = &mut expiry, if user.is_some() => {
                let expired = close(UNAUTHORIZED, "Unauthorized: token expired");
                close_with(&mut sink, &mut source, expired).await;
                break;
            }
            () = &mut closing => {
                close_with(&mut sink, &mut source, close(1001, "server shutting down")).await;
                break;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > state.ws.idle_timeout {
                    let _ = sink.send(close(1001, "idle timeout")).await;
                    break;
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() { break; }
            }
        }
    }
    if let Some(actor) = user {
        match state.app.presence.disconnect(actor, &connection_id).await {
            Ok(()) => {
                // The last connection of this user, on any instance, just went.
                if !state.app.presence.is_online(actor).await.unwrap_or(true) {
                    crate::live::publish_presence(&state.app, actor, false).await;
                }
            }
            Err(error) => tracing::warn!(%error, "presence not cleared; it expires by TTL"),
        }
    }
}

async fn touch_presence(app: &App, user: UserId, connection_id: &str) {
    if let Err(error) = app.presence.heartbeat(user, connection_id).await {
        tracing::warn!(%error, "presence heartbeat failed");
    }
}
