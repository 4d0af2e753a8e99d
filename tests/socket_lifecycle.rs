//! A WebSocket's life: it ends when its token expires (unless the client sends a fresh one),
//! a client's close is answered with a close frame, and a shutdown closes every socket with
//! 1001 before the server exits. Real server, real sockets.

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parley::auth::Tokens;
use parley_domain::UserId;
use serde_json::json;
use support::api::{Session, Store, TestServer, WsClient};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// The secret the test servers sign with (see `support::api`).
const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

const MESSAGES: &str =
    "subscription($r: ID!, $a: Int) { messages(roomId: $r, after: $a) { seq body } }";

/// A token of `who` that expires within `ttl` (expiry is whole seconds).
fn short_token(who: &Session, ttl: Duration) -> String {
    Tokens::with_ttl(&SECRET.into(), ttl)
        .issue(UserId::parse(&who.id).expect("user id"))
        .expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_closed_with_4401_when_its_token_expires() {
    let server = TestServer::start(Store::Memory).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, "general", &[]).await;
    let mut client =
        WsClient::connect(server.addr, &short_token(&alice, Duration::from_secs(2))).await;
    client
        .subscribe("m", MESSAGES, json!({ "r": room, "a": 0 }))
        .await;
    server.send(&alice, &room, "before expiry", "c1").await;
    assert_eq!(client.next("m").await["messages"]["seq"], 1);

    // No more messages after the expiry: the server closes, 4401, even though the client
    // answers every ping.
    assert_eq!(client.closed().await.code, 4401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_with_a_fresh_token_keeps_the_socket_open_past_the_first_expiry() {
    let server = TestServer::start(Store::Memory).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, "general", &[]).await;
    let short = Duration::from_secs(2);
    let expired_by = tokio::time::Instant::now() + short + Duration::from_millis(500);
    let mut client = WsClient::connect(server.addr, &short_token(&alice, short)).await;
    client
        .subscribe("m", MESSAGES, json!({ "r": room, "a": 0 }))
        .await;
    client
        .send_json(json!({ "type": "ping", "payload": { "token": alice.token } }))
        .await;
    // The first token is past its expiry now; the socket still delivers.
    tokio::time::sleep_until(expired_by).await;
    server
        .send(&alice, &room, "after the first expiry", "c1")
        .await;
    assert_eq!(client.next("m").await["messages"]["seq"], 1);

    // A fresh token of somebody else is not a refresh: closed, 4403.
    client
        .send_json(json!({ "type": "ping", "payload": { "token": bob.token } }))
        .await;
    assert_eq!(client.closed().await.code, 4403);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_is_answered_with_a_close_frame() {
    let server = TestServer::start(Store::Memory).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, "general", &[]).await;
    let mut client = WsClient::connect(server.addr, &alice.token).await;
    client
        .subscribe("m", MESSAGES, json!({ "r": room, "a": 0 }))
        .await;
    let socket = client.socket();
    socket
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .expect("sending close");
    // The server's close frame comes back (a dropped TCP connection would be an error or
    // the end of the stream instead).
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return Ok(frame),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(error.to_string()),
                None => return Err("the stream ended without a close frame".to_owned()),
            }
        }
    })
    .await
    .expect("an answer within 10 s");
    let frame = answer.expect("a close frame from the server");
    assert_eq!(
        frame.map(|f| u16::from(f.code)),
        Some(1000),
        "the close code is echoed"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_closes_every_socket_with_1001_then_exits() {
    let server = TestServer::start(Store::Memory).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, "general", &[]).await;
    server.join(&bob, &room).await;
    let mut clients = Vec::new();
    for who in [&alice, &bob] {
        let mut client = WsClient::connect(server.addr, &who.token).await;
        client
            .subscribe("m", MESSAGES, json!({ "r": room, "a": 0 }))
            .await;
        clients.push(client);
    }
    server.send(&alice, &room, "hello", "c1").await;
    for client in &mut clients {
        assert_eq!(client.next("m").await["messages"]["seq"], 1);
    }
    assert_eq!(server.app.sockets.open(), 2);
    let app = server.app.clone();
    let stopping = tokio::spawn(server.stop());
    for client in &mut clients {
        assert_eq!(client.closed().await.code, 1001);
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server exits once its sockets closed")
        .expect("server task");
    assert_eq!(app.sockets.open(), 0, "no socket outlives the server");
}

/// The read buffer is small (idle sockets are the common case), but a client's frame of any
/// size up to the 1 MiB cap still arrives whole: a subscription whose query carries 200 KiB
/// of comment is taken and delivers; a frame over the cap closes the socket with 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_far_larger_than_the_read_buffer_arrive_whole() {
    let server = TestServer::start(Store::Memory).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, "general", &[]).await;
    let mut client = WsClient::connect(server.addr, &alice.token).await;
    let padded = format!("# {}\n{MESSAGES}", "x".repeat(200 * 1024));
    client
        .subscribe("big", &padded, json!({ "r": room, "a": 0 }))
        .await;
    server.send(&alice, &room, "after a big frame", "c1").await;
    let data = client.next("big").await;
    assert_eq!(data["messages"]["body"], "after a big frame");

    let too_big = json!({
        "id": "huge",
        "type": "subscribe",
        "payload": { "query": format!("# {}\n{MESSAGES}", "x".repeat(1100 * 1024)) },
    });
    client.send_json(too_big).await;
    let closed = client.closed().await;
    assert_eq!(closed.code, WsClient::close_code(CloseCode::Size));
    server.stop().await;
}
