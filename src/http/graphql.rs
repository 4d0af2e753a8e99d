//! GraphQL over HTTP: `POST /graphql`, `GET /graphql` (queries only: mutations are refused
//! over GET), `POST /graphql/stream` (subscriptions as server-sent events), and the routes of
//! the GraphQL endpoints (the WebSocket one, `GET /graphql/ws`, is served by [`crate::ws`]).
//!
//! The body is read here (not by async-graphql's extractor) so that the 1 MiB limit,
//! malformed JSON and bad tokens all get a GraphQL-shaped error with `extensions.code`.

use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
use async_graphql::BatchRequest;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query as UrlQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures::StreamExt;
use parley_domain::UserId;

use super::session::{http_actor, ip_of, over_budget, refuse, user_loader, GraphqlState};
use crate::app::App;
use crate::graphql::conventions;
use crate::graphql::error::{refusal, REQUEST_ID};
use crate::graphql::{Actor, ClientIp, RequestId, SubscriptionBudget};
use crate::ws::WsConfig;

/// Largest request body, for GraphQL too.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most operations in one batched request.
const MAX_BATCH: usize = 10;

/// The GraphQL routes.
pub fn routes(app: App, ws: WsConfig) -> Router {
    let state = GraphqlState {
        schema: crate::graphql::schema(app.clone()),
        app,
        ws,
    };
    Router::new()
        .route("/graphql", get(get_graphql).post(post_graphql))
        .route("/graphql/ws", get(crate::ws::websocket))
        .route("/schema.graphql", get(schema_sdl))
        .route("/graphql/stream", axum::routing::post(sse))
        .with_state(state)
}

/// `GET /schema.graphql`: the SDL (the same text as the checked-in `schema.graphql`).
async fn schema_sdl() -> Response {
    static SDL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        SDL.get_or_init(crate::graphql::sdl).clone(),
    )
        .into_response()
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
    if request.query.len() > crate::graphql::MAX_PERSISTED_QUERY {
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
        if let Err(message) = crate::graphql::guard::check_batch(&queries) {
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
