//! Property test at the request boundary: arbitrary text (any Unicode scalar, NUL, controls,
//! huge numbers, wrong JSON types) in every argument the API parses, and arbitrary request
//! ids, sent over real HTTP to a server on PostgreSQL (`PARLEY_FUZZ_STORE=memory`: the
//! embedded store). Nothing may panic, no answer may be a
//! 5xx or `INTERNAL`, and the server keeps answering. Bounded: a fixed number of cases
//! (`PARLEY_FUZZ_CASES`, default 96) so CI time stays small.

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use support::api::{Store, TestServer};

/// Text biased towards what breaks parsers and databases.
fn nasty_text() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        4 => any::<char>(),
        2 => prop::sample::select(vec!['\0', '\u{1}', '\n', '\r', '\t', '\u{7f}', '\u{feff}', '\u{fffd}', '\u{10ffff}', '"', '\\', '$', '{', '}', '\'']),
        3 => prop::char::range('a', 'z'),
    ];
    prop_oneof![
        6 => prop::collection::vec(ch, 0..48).prop_map(String::from_iter),
        1 => (0usize..3, any::<char>()).prop_map(|(k, c)| c.to_string().repeat([70, 200, 5000][k])),
    ]
}

/// A JSON value of a possibly wrong type for a `String`/`ID`/`Int` argument.
fn nasty_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => nasty_text().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        1 => Just(Value::Null),
        1 => Just(json!(["a", 1])),
        1 => Just(json!({ "nested": "\u{0}" })),
    ]
}

const OPERATIONS: [&str; 15] = [
    "mutation($a: String!, $b: String!) { register(username: $a, password: $b) { token } }",
    "mutation($a: String!, $b: String!) { login(username: $a, password: $b) { token } }",
    "mutation($a: String!) { createRoom(name: $a) { id } }",
    "mutation($r: ID!, $a: String!, $b: String!) { sendMessage(roomId: $r, body: $a, clientMsgId: $b) { seq } }",
    "mutation($a: ID!, $b: String!) { sendMessage(roomId: $a, body: $b, clientMsgId: \"x\") { seq } }",
    "query($a: ID!, $n: Int) { room(id: $a, atPosition: $n) { name lastMessage { body } } }",
    "query($r: ID!, $n: Int, $m: Int) { messages(roomId: $r, after: $n, first: $m) { hasMore } }",
    "mutation($r: ID!, $n: Int!) { markRead(roomId: $r, seq: $n) { id } }",
    "query($a: String, $b: ID) { events(aggregateType: $a, aggregateId: $b) { hasMore } }",
    "query($a: ID!) { user(id: $a) { username roles } }",
    "mutation($r: ID!, $n: Int!, $a: String!) { editMessage(roomId: $r, seq: $n, body: $a) { seq } }",
    "mutation($r: ID!, $n: Int!) { deleteMessage(roomId: $r, seq: $n) { seq } }",
    "mutation($r: ID!, $n: Int!, $a: String!) { react(roomId: $r, seq: $n, emoji: $a) { reactions { count } } }",
    "mutation($r: ID!, $a: String!, $b: String!, $n: Int) { sendMessage(roomId: $r, body: $a, clientMsgId: $b, replyTo: $n) { replyTo { seq } } }",
    "mutation($a: ID!) { eraseUser(userId: $a) }",
];

#[test]
fn arbitrary_input_is_never_a_panic_or_internal() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // PostgreSQL by default (it is what refuses unrepresentable text); `memory` to check the
    // embedded store.
    let store = match std::env::var("PARLEY_FUZZ_STORE").as_deref() {
        Ok("memory") => Store::Memory,
        _ => Store::Postgres,
    };
    let server = runtime.block_on(TestServer::start(store));
    let me = runtime.block_on(server.register("fuzzer"));
    let room = runtime.block_on(server.create_room(&me, "fuzz", &[]));
    let http = reqwest::Client::new();
    let cases = std::env::var("PARLEY_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(96);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        0..OPERATIONS.len(),
        nasty_value(),
        nasty_value(),
        prop_oneof![
            Just(None),
            any::<i64>().prop_map(Some),
            (-3i64..5).prop_map(Some)
        ],
        prop::collection::vec(any::<u8>(), 0..90),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(op, a, b, n, request_id, signed_in)| {
            let variables = json!({ "a": a, "b": b, "r": room, "n": n, "m": n });
            let body = json!({ "query": OPERATIONS[op], "variables": variables });
            let (status, answer) = runtime.block_on(async {
                let mut request = http.post(server.url("/graphql")).json(&body);
                if signed_in {
                    request = request.bearer_auth(&me.token);
                }
                if let Ok(id) = reqwest::header::HeaderValue::from_bytes(&request_id) {
                    request = request.header("x-request-id", id);
                }
                let response = request.send().await.expect("the server answers");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.expect("a JSON body"))
            });
            if status >= 500 {
                return Err(TestCaseError::fail(format!(
                    "{status} for {body}: {answer}"
                )));
            }
            for error in answer["errors"].as_array().into_iter().flatten() {
                let code = error["extensions"]["code"].as_str().unwrap_or("none");
                // Clean refusals: a bad input (GraphQL-level parse and validation errors
                // included), a missing or wrong identity, a missing thing, a conflict, a
                // budget. Never INTERNAL, never a code-less error.
                if !matches!(
                    code,
                    "BAD_USER_INPUT"
                        | "GRAPHQL_PARSE_FAILED"
                        | "GRAPHQL_VALIDATION_FAILED"
                        | "UNAUTHENTICATED"
                        | "FORBIDDEN"
                        | "NOT_FOUND"
                        | "CONFLICT"
                        | "RATE_LIMITED"
                ) {
                    return Err(TestCaseError::fail(format!("{code} for {body}: {answer}")));
                }
            }
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    // Still serving after all that.
    let data = runtime.block_on(server.ok(Some(&me.token), "{ me { username } }", json!({})));
    assert_eq!(data["me"]["username"], "fuzzer");
    runtime.block_on(server.stop());
}
