//! The public API end to end, as clients use it: real HTTP, a real WebSocket speaking
//! graphql-transport-ws (and legacy graphql-ws), the same suite against the embedded store
//! and PostgreSQL.

#[macro_use]
mod support;

use std::time::Duration;

use parley::relay::Channel;
use parley::ws::WsConfig;
use parley_domain::UserId;
use serde_json::{json, Value};
use support::api::{closed, open_socket, Store, TestServer, WsClient};

on_both_stores!(
    the_full_flow_of_api_md_works_over_http_and_websocket,
    resending_a_client_msg_id_returns_the_original_message,
    bad_input_gets_a_typed_error_and_changes_nothing,
    a_resumed_subscription_has_no_gap_and_no_duplicate_at_the_seam,
    history_pages_and_the_rooms_list_answer_over_http,
    analysts_page_the_event_log_and_look_back_in_time,
);

const MESSAGES: &str = "subscription($r: ID!, $a: Int) { messages(roomId: $r, after: $a) { seq body sender { username } } }";
const NOTICES_ROOM: &str =
    "subscription($r: ID) { notices(roomId: $r) { kind roomId user { username } text position } }";
const TYPING: &str =
    "subscription($r: ID!) { typing(roomId: $r) { roomId isTyping user { username } } }";

async fn the_full_flow_of_api_md_works_over_http_and_websocket(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    // Bob listens for his own notices before he is invited.
    let mut bob_ws = WsClient::connect(server.addr, &bob.token).await;
    bob_ws
        .subscribe("mine", NOTICES_ROOM, json!({ "r": null }))
        .await;
    let bob_id = UserId::parse(&bob.id).expect("user id");
    server.wait_for_subscriber(&Channel::User(bob_id)).await;

    let room = server.create_room(&alice, "general", &[&bob]).await;
    let invitation = bob_ws.next("mine").await;
    assert_eq!(invitation["notices"]["kind"], "MEMBER_INVITED");
    assert_eq!(invitation["notices"]["roomId"], room.as_str());
    assert_eq!(invitation["notices"]["text"], "alice invited bob");

    // Alice watches the room's notices; Bob joins.
    let mut alice_ws = WsClient::connect(server.addr, &alice.token).await;
    alice_ws
        .subscribe("notices", NOTICES_ROOM, json!({ "r": room }))
        .await;
    // Started: a join committed from now on reaches it.
    server.wait_for_feeds(&room, 1).await;
    server.join(&bob, &room).await;
    let joined = alice_ws.next("notices").await;
    assert_eq!(joined["notices"]["kind"], "MEMBER_JOINED");
    assert_eq!(joined["notices"]["user"]["username"], "bob");
    assert!(joined["notices"]["position"].as_i64().unwrap() > 0);

    // Live messages, in order.
    bob_ws
        .subscribe("messages", MESSAGES, json!({ "r": room, "a": null }))
        .await;
    bob_ws
        .subscribe("typing", TYPING, json!({ "r": room }))
        .await;
    // Alice's notices, Bob's messages and his typing, started (without `after`, messages
    // start at what the read model holds when the subscription starts).
    server.wait_for_feeds(&room, 3).await;
    for i in 1..=3 {
        let sent = server
            .send(&alice, &room, &format!("hello {i}"), &format!("a-{i}"))
            .await;
        assert_eq!(sent["seq"], i);
    }
    for i in 1..=3 {
        let message = bob_ws.next("messages").await;
        assert_eq!(message["messages"]["seq"], i);
        assert_eq!(message["messages"]["body"], format!("hello {i}"));
        assert_eq!(message["messages"]["sender"]["username"], "alice");
    }

    // Resume after 1 on a second connection: 2, 3, then live 4.
    let mut resumed = WsClient::connect(server.addr, &bob.token).await;
    resumed
        .subscribe("r", MESSAGES, json!({ "r": room, "a": 1 }))
        .await;
    assert_eq!(resumed.next("r").await["messages"]["seq"], 2);
    assert_eq!(resumed.next("r").await["messages"]["seq"], 3);

    // Typing: shows, then stops when Alice sends.
    server
        .ok(
            Some(&alice.token),
            "mutation($r: ID!) { typing(roomId: $r) }",
            json!({ "r": room }),
        )
        .await;
    let typing = bob_ws.next("typing").await;
    assert_eq!(typing["typing"]["isTyping"], true);
    assert_eq!(typing["typing"]["user"]["username"], "alice");
    server.send(&alice, &room, "hello 4", "a-4").await;
    let stopped = bob_ws.next("typing").await;
    assert_eq!(stopped["typing"]["isTyping"], false);
    assert_eq!(bob_ws.next("messages").await["messages"]["seq"], 4);
    assert_eq!(resumed.next("r").await["messages"]["seq"], 4);

    // Unread counts and markRead.
    let rooms = server
        .ok(
            Some(&bob.token),
            "{ rooms { id unreadCount lastMessage { seq } } }",
            json!({}),
        )
        .await;
    assert_eq!(rooms["rooms"][0]["id"], room.as_str());
    assert_eq!(rooms["rooms"][0]["unreadCount"], 4);
    assert_eq!(rooms["rooms"][0]["lastMessage"]["seq"], 4);
    let marked = server
        .ok(
            Some(&bob.token),
            "mutation($r: ID!) { markRead(roomId: $r, seq: 3) { unreadCount } }",
            json!({ "r": room }),
        )
        .await;
    assert_eq!(marked["markRead"]["unreadCount"], 1);

    // Bob leaves: his subscriptions end, he gets nothing more, reading is refused.
    server
        .ok(
            Some(&bob.token),
            "mutation($r: ID!) { leaveRoom(roomId: $r) { id } }",
            json!({ "r": room }),
        )
        .await;
    let left = alice_ws.next("notices").await;
    assert_eq!(left["notices"]["kind"], "MEMBER_LEFT");
    assert_eq!(bob_ws.message("messages").await["type"], "complete");
    server.send(&alice, &room, "after bob left", "a-5").await;
    bob_ws.quiet("messages", Duration::from_millis(300)).await;
    server
        .fails(
            Some(&bob.token),
            "query($r: ID!) { messages(roomId: $r) { hasMore } }",
            json!({ "r": room }),
            "FORBIDDEN",
        )
        .await;
    server.stop().await;
}

async fn resending_a_client_msg_id_returns_the_original_message(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, "general", &[]).await;
    let first = server.send(&alice, &room, "once", "same").await;
    let again = server.send(&alice, &room, "once, edited", "same").await;
    assert_eq!(first, again, "the original message, body included");
    let page = server
        .ok(
            Some(&alice.token),
            "query($r: ID!) { messages(roomId: $r) { messages { seq } } }",
            json!({ "r": room }),
        )
        .await;
    assert_eq!(page["messages"]["messages"], json!([{ "seq": 1 }]));
    server.stop().await;
}

async fn bad_input_gets_a_typed_error_and_changes_nothing(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let mallory = server.register("mallory").await;
    let room = server.create_room(&alice, "general", &[]).await;
    server.send(&alice, &room, "hi", "c1").await;
    // Every command commits before it is answered, so the counts below are exact.
    let before = server.event_count().await;
    let send = "mutation($r: ID!, $b: String!, $c: String!) { sendMessage(roomId: $r, body: $b, clientMsgId: $c) { seq } }";

    // Not signed in, bad token.
    server
        .fails(None, "{ me { id } }", json!({}), "UNAUTHENTICATED")
        .await;
    server
        .fails(
            None,
            send,
            json!({ "r": room, "b": "x", "c": "z" }),
            "UNAUTHENTICATED",
        )
        .await;
    let (status, _) = server
        .post(Some("not-a-token"), "{ me { id } }", json!({}))
        .await;
    assert_eq!(status, 401);
    server
        .fails(
            Some("not-a-token"),
            "{ me { id } }",
            json!({}),
            "UNAUTHENTICATED",
        )
        .await;

    // Non-members may not read, send or subscribe.
    server
        .fails(
            Some(&mallory.token),
            "query($r: ID!) { messages(roomId: $r) { hasMore } }",
            json!({ "r": room }),
            "FORBIDDEN",
        )
        .await;
    server
        .fails(
            Some(&mallory.token),
            send,
            json!({ "r": room, "b": "x", "c": "m1" }),
            "FORBIDDEN",
        )
        .await;
    let mut ws = WsClient::connect(server.addr, &mallory.token).await;
    ws.subscribe("s", MESSAGES, json!({ "r": room, "a": null }))
        .await;
    assert_eq!(ws.refusal("s").await, "FORBIDDEN");

    // Bodies, ids, rooms.
    server
        .fails(
            Some(&alice.token),
            send,
            json!({ "r": room, "b": "x".repeat(4001), "c": "c2" }),
            "BAD_USER_INPUT",
        )
        .await;
    server
        .fails(
            Some(&alice.token),
            send,
            json!({ "r": room, "b": " \n\t ", "c": "c3" }),
            "BAD_USER_INPUT",
        )
        .await;
    server
        .fails(
            Some(&alice.token),
            send,
            json!({ "r": room, "b": "x", "c": "" }),
            "BAD_USER_INPUT",
        )
        .await;
    server
        .fails(
            Some(&alice.token),
            send,
            json!({ "r": "00000000-0000-7000-8000-000000000000", "b": "x", "c": "c4" }),
            "NOT_FOUND",
        )
        .await;
    server
        .fails(
            Some(&alice.token),
            send,
            json!({ "r": "not-a-uuid", "b": "x", "c": "c5" }),
            "BAD_USER_INPUT",
        )
        .await;
    server
        .fails(
            Some(&alice.token),
            "mutation($r: ID!) { joinRoom(roomId: $r) { id } }",
            json!({ "r": room }),
            "CONFLICT",
        )
        .await;
    server
        .fails(
            Some(&mallory.token),
            "mutation($r: ID!) { leaveRoom(roomId: $r) { id } }",
            json!({ "r": room }),
            "CONFLICT",
        )
        .await;
    server
        .fails(
            None,
            "mutation { register(username: \"Bad Name\", password: \"password-1\") { token } }",
            json!({}),
            "BAD_USER_INPUT",
        )
        .await;
    server
        .fails(
            None,
            "mutation { register(username: \"short_pw\", password: \"1234\") { token } }",
            json!({}),
            "BAD_USER_INPUT",
        )
        .await;
    server
        .fails(
            None,
            "mutation { register(username: \"alice\", password: \"password-1\") { token } }",
            json!({}),
            "CONFLICT",
        )
        .await;
    server
        .fails(
            None,
            "mutation { login(username: \"alice\", password: \"wrong-password\") { token } }",
            json!({}),
            "UNAUTHENTICATED",
        )
        .await;
    server
        .fails(
            Some(&alice.token),
            "query($r: ID!) { messages(roomId: $r, first: 101) { hasMore } }",
            json!({ "r": room }),
            "BAD_USER_INPUT",
        )
        .await;
    server
        .fails(
            Some(&alice.token),
            "mutation($r: ID!) { markRead(roomId: $r, seq: 99) { id } }",
            json!({ "r": room }),
            "BAD_USER_INPUT",
        )
        .await;

    // Transport-level: malformed JSON, oversized body, too deep, mutation over GET, unknown field.
    let http = reqwest::Client::new();
    let response = http
        .post(server.url("/graphql"))
        .header("content-type", "application/json")
        .body("{ not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");

    let huge =
        json!({ "query": "{ me { id } }", "variables": { "pad": "x".repeat(1024 * 1024 + 10) } });
    let response = http
        .post(server.url("/graphql"))
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");

    // (`ofType` does not count towards the depth: tools' introspection unwraps types with it.)
    let too_deep = format!(
        "{{ __schema {{ types {{ {}name{} }} }} }}",
        "fields { type { ".repeat(6),
        " } }".repeat(6)
    );
    server
        .fails(
            Some(&alice.token),
            &too_deep,
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
        )
        .await;

    let response = http
        .get(server.url("/graphql"))
        .query(&[(
            "query",
            "mutation { register(username: \"via_get\", password: \"password-1\") { token } }",
        )])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    server
        .fails(
            Some(&alice.token),
            "{ noSuchField }",
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
        )
        .await;

    assert_eq!(
        server.event_count().await,
        before,
        "no bad request stored anything"
    );
    server.stop().await;
}

async fn a_resumed_subscription_has_no_gap_and_no_duplicate_at_the_seam(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, "general", &[]).await;
    for i in 1..=120 {
        server.send(&alice, &room, "old", &format!("old-{i}")).await;
    }
    // Subscribe after 7 while messages keep coming.
    let mut ws = WsClient::connect(server.addr, &alice.token).await;
    ws.subscribe("m", MESSAGES, json!({ "r": room, "a": 7 }))
        .await;
    let sender = {
        let server_url = server.url("/graphql");
        let token = alice.token.clone();
        let room = room.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 121..=160 {
                let query = "mutation($r: ID!, $c: String!) { sendMessage(roomId: $r, body: \"new\", clientMsgId: $c) { seq } }";
                http.post(&server_url)
                    .bearer_auth(&token)
                    .json(&json!({ "query": query, "variables": { "r": room, "c": format!("new-{i}") } }))
                    .send()
                    .await
                    .unwrap();
            }
        })
    };
    for expected in 8..=160 {
        assert_eq!(ws.next("m").await["messages"]["seq"], expected);
    }
    sender.await.unwrap();
    ws.quiet("m", Duration::from_millis(200)).await;
    server.stop().await;
}

async fn history_pages_and_the_rooms_list_answer_over_http(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let quiet = server.create_room(&alice, "quiet", &[]).await;
    let busy = server.create_room(&alice, "busy", &[&bob]).await;
    for i in 1..=60 {
        server
            .send(&alice, &busy, &format!("m{i}"), &format!("c{i}"))
            .await;
    }
    let page = |args: &str| {
        format!("query($r: ID!) {{ messages(roomId: $r{args}) {{ hasMore messages {{ seq sender {{ username }} }} }} }}")
    };
    let newest = server
        .ok(Some(&alice.token), &page(""), json!({ "r": busy }))
        .await;
    let seqs: Vec<i64> = newest["messages"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (11..=60).collect::<Vec<_>>());
    assert_eq!(newest["messages"]["hasMore"], true);
    let older = server
        .ok(
            Some(&alice.token),
            &page(", before: 11, last: 5"),
            json!({ "r": busy }),
        )
        .await;
    let seqs: Vec<i64> = older["messages"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![6, 7, 8, 9, 10]);

    let rooms = server
        .ok(
            Some(&alice.token),
            "{ rooms { name host { username } members { username } invited { username } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        rooms["rooms"][0]["name"], "busy",
        "most recent activity first"
    );
    assert_eq!(rooms["rooms"][1]["name"], "quiet");
    assert_eq!(rooms["rooms"][0]["invited"], json!([{ "username": "bob" }]));
    let me = server
        .ok(
            Some(&bob.token),
            "{ me { username } room: user(id: \"00000000-0000-7000-8000-000000000000\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(me["me"]["username"], "bob");
    assert_eq!(me["room"], Value::Null);
    let invited_view = server
        .ok(
            Some(&bob.token),
            "query($r: ID!) { room(id: $r) { name unreadCount } }",
            json!({ "r": busy }),
        )
        .await;
    assert_eq!(invited_view["room"]["name"], "busy");
    let _ = quiet;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_missing_token_closes_the_socket_with_4403() {
    let server = TestServer::start(Store::Memory).await;
    for payload in [json!({ "token": "forged" }), json!({})] {
        let mut socket = open_socket(server.addr, "graphql-transport-ws", None).await;
        use futures::SinkExt;
        socket
            .send(tokio_tungstenite::tungstenite::Message::Text(
                json!({ "type": "connection_init", "payload": payload })
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
        assert_eq!(closed(&mut socket).await.code, 4403);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_upgrade_header_is_accepted() {
    let server = TestServer::start(Store::Memory).await;
    let alice = server.register("alice").await;
    let mut socket = open_socket(server.addr, "graphql-transport-ws", Some(&alice.token)).await;
    use futures::{SinkExt, StreamExt};
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            json!({ "type": "connection_init" }).to_string().into(),
        ))
        .await
        .unwrap();
    let ack = socket.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("connection_ack"), "{ack:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_initialises_is_closed_with_4408() {
    let ws = WsConfig {
        init_timeout: Duration::from_millis(300),
        ..WsConfig::default()
    };
    let server = TestServer::start_with(Store::Memory, ws).await;
    let mut socket = open_socket(server.addr, "graphql-transport-ws", None).await;
    assert_eq!(closed(&mut socket).await.code, 4408);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_at_most_the_configured_subscriptions() {
    let ws = WsConfig {
        max_subscriptions: 2,
        ..WsConfig::default()
    };
    let server = TestServer::start_with(Store::Memory, ws).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, "general", &[]).await;
    let mut client = WsClient::connect(server.addr, &alice.token).await;
    // Both slots taken (and proven live) before a third is asked for: subscriptions start
    // concurrently, so asking for three at once could refuse any one of them.
    for id in ["a", "b"] {
        client
            .subscribe(id, MESSAGES, json!({ "r": room, "a": 0 }))
            .await;
    }
    server.send(&alice, &room, "one", "c1").await;
    for id in ["a", "b"] {
        assert_eq!(client.next(id).await["messages"]["seq"], 1);
    }
    client
        .subscribe("c", MESSAGES, json!({ "r": room, "a": null }))
        .await;
    assert_eq!(client.refusal("c").await, "BAD_USER_INPUT");
    // Ending one frees a slot.
    client.unsubscribe("a").await;
    let mut freed = None;
    for attempt in 0..50 {
        let id = format!("d{attempt}");
        client
            .subscribe(&id, MESSAGES, json!({ "r": room, "a": 0 }))
            .await;
        let first = client.message(&id).await;
        if first["payload"]["data"]["messages"]["seq"] == 1 {
            freed = Some(id);
            break;
        }
        assert_eq!(
            first["payload"]["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{first}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = freed.expect("the ended subscription's slot is given back");
    server.send(&alice, &room, "two", "c2").await;
    assert_eq!(client.next(&id).await["messages"]["seq"], 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_graphql_ws_protocol_works_too() {
    let server = TestServer::start(Store::Memory).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, "general", &[]).await;
    let mut client =
        WsClient::connect_with(server.addr, "graphql-ws", json!({ "token": alice.token })).await;
    client
        .subscribe("m", MESSAGES, json!({ "r": room, "a": null }))
        .await;
    server.wait_for_feeds(&room, 1).await;
    server.send(&alice, &room, "hi", "c1").await;
    assert_eq!(client.next("m").await["messages"]["seq"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_health_readiness_and_metrics_answer() {
    let server = TestServer::start(Store::Memory).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, "general", &[]).await;
    server.send(&alice, &room, "hi", "c1").await;
    let http = reqwest::Client::new();
    let page = http.get(server.url("/graphql")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("/assets/graphiql-init.js"), "{html}");
    // (The page itself runs in Chromium in tests/browser.rs.)
    let script = http
        .get(server.url("/assets/graphiql-init.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        script.contains("/graphql/ws"),
        "GraphiQL is wired to the WebSocket"
    );
    let ready: Value = http
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["relay"], "inprocess");
    let response = http.get(server.url("/healthz")).send().await.unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "parley_http_requests_total",
        "parley_command_duration_seconds",
        "parley_projection_lag_events",
        "parley_active_subscriptions",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    server.stop().await;
}

async fn analysts_page_the_event_log_and_look_back_in_time(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let analyst = server.register("ana").await;
    let room = server.create_room(&alice, "general", &[]).await;
    server.send(&alice, &room, "before bob", "c1").await;
    server.join(&bob, &room).await;
    server.send(&bob, &room, "after bob", "c2").await;
    let events = "query($a: Int, $f: Int, $t: String, $i: ID, $e: [String!]) { events(after: $a, first: $f, aggregateType: $t, aggregateId: $i, eventTypes: $e) { hasMore events { position aggregateType aggregateId sequence eventType eventVersion payload metadata recordedAt } } }";

    server
        .fails(Some(&analyst.token), events, json!({}), "FORBIDDEN")
        .await;
    let meta = parley::commands::CommandMeta::system("test");
    let analyst_id = parley_domain::UserId::parse(&analyst.id).unwrap();
    server
        .app
        .commands
        .grant_role(analyst_id, parley_domain::Role::Analyst, &meta)
        .await
        .unwrap();

    // Wait until every event has its position (the projector is a few ms behind).
    let total = server.event_count().await;
    let mut log = Vec::new();
    for _ in 0..200 {
        let page = server
            .ok(Some(&analyst.token), events, json!({ "f": 1000 }))
            .await;
        log = page["events"]["events"].as_array().unwrap().clone();
        if log.len() as i64 == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(log.len() as i64, total, "the log pages every event");
    let positions: Vec<i64> = log
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(
        positions,
        (1..=total).collect::<Vec<_>>(),
        "in position order, no gap"
    );
    let registered = log
        .iter()
        .find(|e| e["eventType"] == "UserRegistered")
        .unwrap();
    assert_eq!(
        registered["payload"]["UserRegistered"]["password_hash"],
        "[redacted]"
    );
    assert!(registered["metadata"]["request_id"].is_string());
    assert!(registered["recordedAt"].as_str().unwrap().ends_with('Z'));

    let first_two = server
        .ok(Some(&analyst.token), events, json!({ "f": 2 }))
        .await;
    assert_eq!(first_two["events"]["hasMore"], true);
    let messages = server
        .ok(
            Some(&analyst.token),
            events,
            json!({ "t": "Room", "i": room, "e": ["MessageSent"] }),
        )
        .await;
    let bodies: Vec<&str> = messages["events"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["MessageSent"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["before bob", "after bob"]);
    server
        .fails(
            Some(&analyst.token),
            events,
            json!({ "t": "Galaxy" }),
            "BAD_USER_INPUT",
        )
        .await;

    // Time travel: the room as of the first message, before Bob joined.
    let first_message = log
        .iter()
        .find(|e| e["eventType"] == "MessageSent")
        .unwrap()["position"]
        .as_i64()
        .unwrap();
    let then = server
        .ok(
            Some(&alice.token),
            "query($r: ID!, $p: Int) { room(id: $r, atPosition: $p) { name members { username } lastMessage { body } } }",
            json!({ "r": room, "p": first_message }),
        )
        .await;
    assert_eq!(then["room"]["members"], json!([{ "username": "alice" }]));
    assert_eq!(then["room"]["lastMessage"]["body"], "before bob");
    let history_then = server
        .ok(
            Some(&alice.token),
            "query($r: ID!, $p: Int) { messages(roomId: $r, atPosition: $p) { messages { body } } }",
            json!({ "r": room, "p": first_message }),
        )
        .await;
    assert_eq!(
        history_then["messages"]["messages"],
        json!([{ "body": "before bob" }])
    );
    // An analyst may look back at a room they are not in; an outsider may not.
    let outsider = server.register("outsider").await;
    server
        .fails(
            Some(&outsider.token),
            "query($r: ID!) { room(id: $r, atPosition: 1) { name } }",
            json!({ "r": room }),
            "FORBIDDEN",
        )
        .await;
    let as_analyst = server
        .ok(
            Some(&analyst.token),
            "query($r: ID!, $p: Int) { room(id: $r, atPosition: $p) { name } }",
            json!({ "r": room, "p": first_message }),
        )
        .await;
    assert_eq!(as_analyst["room"]["name"], "general");
    server.stop().await;
}

/// `login` right after `register`, while the users directory is held behind (its table
/// locked, so the projector waits): the login waits for the projector to catch up and signs
/// in, instead of refusing the new account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_right_after_register_waits_for_the_directory() {
    let server = TestServer::start(Store::Postgres).await;
    let pool = server.db.as_ref().expect("a database").pool.clone();
    let mut hold = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE users_view IN EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .expect("locking users_view");
    server.register("newcomer").await;
    // The projector is stuck behind the lock: the directory does not know the newcomer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the projector never waited on the lock"
        );
        tokio::task::yield_now().await;
    }
    let login = server.ok(
        None,
        "mutation { login(username: \"newcomer\", password: \"password-123\") { token } }",
        json!({}),
    );
    let release = async {
        hold.commit().await.expect("releasing the lock");
    };
    let (signed_in, ()) = tokio::join!(login, release);
    assert!(signed_in["login"]["token"].is_string(), "{signed_in}");
    server.stop().await;
}
