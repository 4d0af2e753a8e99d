//! What GraphQL tools and clients expect of a server, over real HTTP and WebSocket:
//! the standard introspection query (the exact text graphql-js generates), the SDL at
//! `/schema.graphql`, GraphQL-over-HTTP media types and status codes, error codes for
//! requests that could not run, fields in request order, automatic persisted queries, the
//! token forms of `connectionParams`, stale tokens on public operations, and timestamps.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::api::{Store, TestServer, WsClient};

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

/// POSTs `body` with `accept` (and a bearer token); returns status, content type and the
/// body as text (so that key order can be checked).
async fn post_raw(
    server: &TestServer,
    accept: Option<&str>,
    token: Option<&str>,
    body: &Value,
) -> (u16, String, String) {
    let mut request = reqwest::Client::new()
        .post(server.url("/graphql"))
        .json(body);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST /graphql");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.text().await.expect("a body"))
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_introspection_query_is_answered_and_the_sdl_is_served() {
    let query =
        support::node::run("introspection_query.mjs", &[], &[], Duration::from_secs(60)).await;
    assert!(
        query.contains("specifiedByURL") && query.contains("isRepeatable"),
        "the generated query lacks the options tools use: {query}"
    );
    let server = TestServer::start(Store::Memory).await;
    let (status, _, text) = post_raw(&server, None, None, &json!({ "query": query })).await;
    let body = parse(&text);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("errors").is_none(),
        "introspection refused: {body}"
    );
    let types = body["data"]["__schema"]["types"].as_array().expect("types");
    let named = |name: &str| {
        types
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no type {name}"))
    };
    assert!(named("Room")["fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "unreadCount"));
    assert_eq!(
        named("DateTime")["specifiedByURL"],
        "https://www.rfc-editor.org/rfc/rfc3339"
    );
    assert!(body["data"]["__schema"]["directives"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["isRepeatable"].is_boolean()));

    // graphql-js builds a working client schema from the answer, as GraphiQL does.
    let file = std::env::temp_dir().join(format!("parley-introspection-{}.json", server.addr));
    std::fs::write(&file, &text).expect("writing the introspection result");
    let printed = support::node::run(
        "build_schema.mjs",
        &[file.to_str().unwrap()],
        &[],
        Duration::from_secs(60),
    )
    .await;
    std::fs::remove_file(&file).ok();
    assert!(printed.contains("type Room {"), "{printed}");
    assert!(printed.contains("sendMessage("), "{printed}");

    // The SDL over HTTP is the checked-in schema.graphql.
    let response = reqwest::get(server.url("/schema.graphql"))
        .await
        .expect("GET /schema.graphql");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let sdl = response.text().await.unwrap();
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    assert_eq!(sdl, checked_in);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_depth_limit_still_refuses_deep_operations() {
    let server = TestServer::start(Store::Memory).await;
    // Thirteen levels of fields (introspection that recurses through types is the costly
    // shape): refused.
    let deep = "{ __schema { types { fields { type { fields { type { fields { type { fields { \
                type { fields { type { name } } } } } } } } } } } } }";
    let (status, content_type, text) = post_raw(
        &server,
        Some(GRAPHQL_RESPONSE),
        None,
        &json!({ "query": deep }),
    )
    .await;
    let body = parse(&text);
    assert_eq!(status, 400, "{body}");
    assert_eq!(content_type, GRAPHQL_RESPONSE);
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("nested too deep"));
    // Twelve levels: answered.
    let twelve = "{ __schema { types { fields { type { fields { type { fields { type { fields { \
                  type { fields { name } } } } } } } } } } } }";
    let (status, _, text) = post_raw(&server, None, None, &json!({ "query": twelve })).await;
    assert_eq!(status, 200, "{text}");
    assert!(parse(&text).get("errors").is_none(), "{text}");
    // A fragment cycle is refused, not followed.
    let cycle =
        "{ __schema { ...A } } fragment A on __Schema { ...B } fragment B on __Schema { ...A }";
    let (_, _, text) = post_raw(&server, None, None, &json!({ "query": cycle })).await;
    assert_eq!(code(&parse(&text)), "GRAPHQL_VALIDATION_FAILED", "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_and_validation_errors_follow_graphql_over_http() {
    let server = TestServer::start(Store::Memory).await;
    for (query, expected) in [
        ("{ me { id ", "GRAPHQL_PARSE_FAILED"),
        ("{ noSuchField }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ room { id } }", "GRAPHQL_VALIDATION_FAILED"),
    ] {
        // Asked for application/graphql-response+json: that type, 400, no data.
        let (status, content_type, text) = post_raw(
            &server,
            Some("application/graphql-response+json, application/json;q=0.9"),
            None,
            &json!({ "query": query }),
        )
        .await;
        let body = parse(&text);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(content_type, GRAPHQL_RESPONSE, "{query}");
        assert_eq!(code(&body), expected, "{query}: {body}");
        assert!(body.get("data").is_none(), "{body}");
        // Plain JSON clients keep getting 200 application/json.
        let (status, content_type, text) = post_raw(
            &server,
            Some("application/json"),
            None,
            &json!({ "query": query }),
        )
        .await;
        assert_eq!(status, 200, "{query}: {text}");
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        assert_eq!(code(&parse(&text)), expected, "{query}: {text}");
    }
    // A successful operation with the new media type: 200 and that type.
    let (status, content_type, text) = post_raw(
        &server,
        Some(GRAPHQL_RESPONSE),
        None,
        &json!({ "query": "{ __typename }" }),
    )
    .await;
    assert_eq!((status, content_type.as_str()), (200, GRAPHQL_RESPONSE));
    assert_eq!(parse(&text)["data"]["__typename"], "Query");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_level_fields_come_back_in_request_order() {
    let server = TestServer::start(Store::Memory).await;
    let alice = server.register("order_alice").await;
    server.create_room(&alice, "order-room", &[]).await;
    for (query, first, second) in [
        ("{ me { id } rooms { id } }", "\"me\"", "\"rooms\""),
        ("{ rooms { id } me { id } }", "\"rooms\"", "\"me\""),
        ("{ zz: me { id } aa: rooms { id } }", "\"zz\"", "\"aa\""),
    ] {
        for accept in [None, Some(GRAPHQL_RESPONSE)] {
            let (status, _, text) = post_raw(
                &server,
                accept,
                Some(&alice.token),
                &json!({ "query": query }),
            )
            .await;
            assert_eq!(status, 200, "{text}");
            let (a, b) = (text.find(first).unwrap(), text.find(second).unwrap());
            assert!(a < b, "{query} answered out of order: {text}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_persisted_queries_register_and_replay() {
    let server = TestServer::start(Store::Memory).await;
    // sha256 of the query text, as Apollo's PersistedQueryLink computes it (`sha256sum`).
    let query = "{ __typename }";
    let hash = "7f56e67dd21ab3f30d1ff8b7bed08893f0a0db86449836189b361dd1e56ddb4b";
    let persisted = json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
    // The hash alone, before registration: PERSISTED_QUERY_NOT_FOUND, with 200 so that
    // Apollo retries with the text instead of disabling APQ.
    for accept in [None, Some(GRAPHQL_RESPONSE)] {
        let (status, _, text) =
            post_raw(&server, accept, None, &json!({ "extensions": persisted })).await;
        let body = parse(&text);
        assert_eq!(status, 200, "{body}");
        assert_eq!(code(&body), "PERSISTED_QUERY_NOT_FOUND", "{body}");
        assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound");
    }
    // A wrong hash with the text is refused and registers nothing.
    let wrong = json!({ "persistedQuery": { "version": 1, "sha256Hash": "00" } });
    let (_, _, text) = post_raw(
        &server,
        None,
        None,
        &json!({ "query": query, "extensions": wrong }),
    )
    .await;
    assert_eq!(code(&parse(&text)), "BAD_USER_INPUT", "{text}");
    // Hash and text: runs and registers.
    let (status, _, text) = post_raw(
        &server,
        None,
        None,
        &json!({ "query": query, "extensions": persisted }),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(parse(&text)["data"]["__typename"], "Query");
    // Then the hash alone is enough.
    let (status, _, text) =
        post_raw(&server, None, None, &json!({ "extensions": persisted })).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(parse(&text)["data"]["__typename"], "Query", "{text}");
    // A second registered query: replayed by hash in turn with the first, each is its own
    // operation (hash-only requests carry no text, so no cache keyed by text may mix them).
    let other = "{ other: __typename }";
    let other_hash = "69b2937ee6f6d4a92b42ace902455c68ba49042b7bb280690c50426973a0b810";
    let other_persisted = json!({ "persistedQuery": { "version": 1, "sha256Hash": other_hash } });
    post_raw(
        &server,
        None,
        None,
        &json!({ "query": other, "extensions": other_persisted }),
    )
    .await;
    for _ in 0..2 {
        for (extensions, field) in [(&other_persisted, "other"), (&persisted, "__typename")] {
            let (_, _, text) =
                post_raw(&server, None, None, &json!({ "extensions": extensions })).await;
            assert_eq!(parse(&text)["data"][field], "Query", "{field}: {text}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_is_ignored_on_public_operations_only() {
    let server = TestServer::start(Store::Memory).await;
    let stale = Some("not-a-valid-token");
    let register = json!({
        "query": "mutation { register(username: \"stale_bob\", password: \"password-123\") { user { username } } }"
    });
    let (status, _, text) = post_raw(&server, None, stale, &register).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        parse(&text)["data"]["register"]["user"]["username"],
        "stale_bob"
    );
    let login = json!({
        "query": "mutation { login(username: \"stale_bob\", password: \"password-123\") { token } }"
    });
    let (status, _, text) = post_raw(&server, None, stale, &login).await;
    assert_eq!(status, 200, "{text}");
    assert!(parse(&text)["data"]["login"]["token"].is_string(), "{text}");
    let (status, _, text) =
        post_raw(&server, None, stale, &json!({ "query": "{ __typename }" })).await;
    assert_eq!(status, 200, "{text}");
    // Anything that needs the user still says the token is bad.
    let (status, _, text) =
        post_raw(&server, None, stale, &json!({ "query": "{ me { id } }" })).await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(code(&parse(&text)), "UNAUTHENTICATED");
    let (status, _, text) = post_raw(
        &server,
        None,
        stale,
        &json!({ "query": "mutation { login(username: \"stale_bob\", password: \"password-123\") { token } createRoom(name: \"x\") { id } }" }),
    )
    .await;
    assert_eq!(status, 401, "{text}");
    // Over GET too.
    let response = reqwest::Client::new()
        .get(server.url("/graphql?query=%7B__typename%7D"))
        .bearer_auth("not-a-valid-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_params_accept_token_auth_token_and_authorization() {
    let server = TestServer::start(Store::Memory).await;
    let alice = server.register("params_alice").await;
    let room = server.create_room(&alice, "params-room", &[]).await;
    let bearer = format!("Bearer {}", alice.token);
    for payload in [
        json!({ "token": alice.token }),
        json!({ "authToken": alice.token }),
        json!({ "Authorization": bearer }),
        json!({ "authorization": alice.token }),
        json!({ "headers": { "Authorization": bearer } }),
    ] {
        let mut ws = WsClient::connect_with(server.addr, "graphql-transport-ws", payload).await;
        ws.subscribe(
            "m",
            "subscription($r: ID!) { messages(roomId: $r, after: 0) { seq body } }",
            json!({ "r": room }),
        )
        .await;
        server.send(&alice, &room, "hello", &uuid()).await;
        let message = ws.next("m").await;
        assert_eq!(message["messages"]["body"], "hello", "{message}");
    }
    server.stop().await;
}

fn uuid() -> String {
    format!(
        "c-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// RFC 3339, UTC, six fractional digits, `Z`.
fn is_api_timestamp(value: &Value) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    let bytes = text.as_bytes();
    text.len() == 27
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
        && bytes[19] == b'.'
        && bytes[20..26].iter().all(u8::is_ascii_digit)
        && bytes[26] == b'Z'
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_timestamp_is_utc_with_microseconds() {
    let server = TestServer::start(Store::Postgres).await;
    let alice = server.register("time_alice").await;
    let room = server.create_room(&alice, "time-room", &[]).await;
    let sent = server.send(&alice, &room, "tick", "c-time-1").await;
    let data = server
        .ok(
            Some(&alice.token),
            "query($r: ID!) { me { createdAt } room(id: $r) { createdAt }
              messages(roomId: $r) { messages { sentAt } } }",
            json!({ "r": room }),
        )
        .await;
    let mut seen = vec![
        data["me"]["createdAt"].clone(),
        data["room"]["createdAt"].clone(),
        data["messages"]["messages"][0]["sentAt"].clone(),
    ];
    assert_eq!(sent["body"], "tick");
    // Notices carry `at` too (live, over the WebSocket).
    let bob = server.register("time_bob").await;
    let second = server.create_room(&alice, "time-two", &[&bob]).await;
    let mut ws = WsClient::connect(server.addr, &alice.token).await;
    ws.subscribe(
        "n",
        "subscription($r: ID!) { notices(roomId: $r) { kind at } }",
        json!({ "r": second }),
    )
    .await;
    // Once the messages subscription answers, the notices one (subscribed first on the same
    // connection, its resolver run first) is listening.
    ws.subscribe(
        "m",
        "subscription($r: ID!) { messages(roomId: $r, after: 0) { body } }",
        json!({ "r": second }),
    )
    .await;
    server.send(&alice, &second, "sync", "c-time-2").await;
    assert_eq!(ws.next("m").await["messages"]["body"], "sync");
    server.join(&bob, &second).await;
    let notice = ws.next("n").await;
    seen.push(notice["notices"]["at"].clone());
    for value in &seen {
        assert!(
            is_api_timestamp(value),
            "not RFC 3339 UTC micros Z: {value} (all: {seen:?})"
        );
    }
    server.stop().await;
}

/// Apollo Client as its docs set it up: HttpLink behind PersistedQueryLink, GraphQLWsLink
/// with `connectionParams: { authToken }`, joined by `split` (`tests/js/apollo_client.mjs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apollo_client_with_persisted_queries_and_graphql_ws_link_works() {
    // The client is the subject (the API suite runs on both stores).
    let server = TestServer::start(Store::Memory).await;
    let stdout = support::node::run(
        "apollo_client.mjs",
        &[&server.url("")],
        &[],
        Duration::from_secs(90),
    )
    .await;
    assert!(stdout.contains("all assertions passed"), "{stdout}");
    server.stop().await;
}

/// GraphQL over SSE (`POST /graphql/stream`, graphql-sse's distinct connections mode) with
/// the npm `graphql-sse` client (`tests/js/sse_client.mjs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graphql_sse_npm_client_queries_and_subscribes() {
    let server = TestServer::start(Store::Memory).await;
    let stdout = support::node::run(
        "sse_client.mjs",
        &[&server.url("")],
        &[],
        Duration::from_secs(90),
    )
    .await;
    assert!(stdout.contains("all assertions passed"), "{stdout}");
    server.stop().await;
}
