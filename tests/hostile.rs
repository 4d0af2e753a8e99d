//! A hostile client gets nothing: bounded work per request, rate limits, no leaks, tokens
//! bound to this deployment, every bad input a clean error that changes nothing. Each test
//! talks to a real server over real HTTP or WebSocket.

mod support;

use std::time::{Duration, Instant};

use futures::SinkExt;
use parley::app::{App, AppOptions};
use parley::config::HttpLimits;
use parley::limits::{Budget, RateLimitConfig};
use parley::store::{EventLog, PostgresLog};
use parley::ws::WsConfig;
use serde_json::{json, Value};
use support::api::{closed, fast_projector, open_socket, Store, TestServer, WsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "test-secret-that-is-long-enough-0123456789";
const LOGIN: &str =
    "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { token } }";
const SEND: &str = "mutation($r: ID!, $b: String!, $c: String!) { sendMessage(roomId: $r, body: $b, clientMsgId: $c) { seq } }";

/// A server on the in-memory store with the given budgets.
async fn limited(config: RateLimitConfig) -> TestServer {
    let app = App::start_with(
        EventLog::memory(),
        SECRET.into(),
        AppOptions::local(fast_projector()),
    )
    .with_rate_limits(&config);
    TestServer::on_app(app, None, WsConfig::default(), HttpLimits::default()).await
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn post_raw(server: &TestServer, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url("/graphql"))
        .json(&body)
        .send()
        .await
        .expect("POST /graphql");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

// ---- Bounded work -------------------------------------------------------------------------

#[tokio::test]
async fn one_operation_or_batch_gets_at_most_one_password_check() {
    let server = TestServer::start(Store::Memory).await;
    server.register("victim").await;
    let aliases: String = (0..999)
        .map(|i| {
            format!("a{i}: login(username: \"victim\", password: \"guess-{i:04}\") {{ token }} ")
        })
        .collect();
    let started = Instant::now();
    let (status, body) = post_raw(
        &server,
        json!({ "query": format!("mutation {{ {aliases} }}") }),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    assert!(body["data"].is_null(), "nothing ran: {body}");
    // Through a fragment spread twice, too.
    let (_, body) = post_raw(
        &server,
        json!({ "query": "mutation { ...F ...F } fragment F on Mutation { login(username: \"victim\", password: \"password-123\") { token } }" }),
    )
    .await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");

    // A batch of ten single logins is one request with ten checks: refused whole.
    let entry = json!({ "query": LOGIN, "variables": { "u": "victim", "p": "wrong-password" } });
    let (status, body) = post_raw(&server, Value::Array(vec![entry.clone(); 10])).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    // One login in a batch with other work is fine.
    let (status, body) = post_raw(
        &server,
        json!([
            { "query": LOGIN, "variables": { "u": "victim", "p": "password-123" } },
            { "query": "{ __typename }" }
        ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body[0]["data"]["login"]["token"].is_string(), "{body}");
    // 999 refused checks cost no hashing: far below one second (999 hashes took 26 s).
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    server.stop().await;
}

#[tokio::test]
async fn registration_checks_the_username_before_hashing() {
    let server = TestServer::start(Store::Memory).await;
    for bad in ["Bad Name", "x", "évé"] {
        let error = server
            .fails(
                None,
                "mutation($u: String!) { register(username: $u, password: \"password-123\") { token } }",
                json!({ "u": bad }),
                "BAD_USER_INPUT",
            )
            .await;
        assert!(
            error["message"].as_str().unwrap().contains("sername"),
            "{error}"
        );
    }
    assert_eq!(server.event_count().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn list_fields_count_by_page_size() {
    let server = TestServer::start(Store::Memory).await;
    let ann = server.register("ann").await;
    // 20 aliases of the largest page of the event log: each weighs 1000 × its selection.
    let aliases: String = (0..20)
        .map(|i| format!("e{i}: events(first: 1000) {{ events {{ position payload }} }} "))
        .collect();
    let (_, body) = server
        .post(Some(&ann.token), &format!("{{ {aliases} }}"), json!({}))
        .await;
    // The complexity check is part of validation: refused before anything runs.
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("omplex"),
        "{body}"
    );
    // A normal page passes the check (and is refused for the role, not the size).
    let (_, body) = server
        .post(
            Some(&ann.token),
            "{ events(first: 100) { events { position } } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
    server.stop().await;
}

// ---- Rate limits --------------------------------------------------------------------------

#[tokio::test]
async fn password_guesses_against_one_account_are_limited() {
    let server = limited(RateLimitConfig {
        logins_per_account: Budget::per_minute(5, 5),
        ..RateLimitConfig::unlimited()
    })
    .await;
    server.register("victim").await;
    server.register("bystander").await;
    for i in 0..5 {
        server
            .fails(
                None,
                LOGIN,
                json!({ "u": "victim", "p": format!("guess-{i:04}") }),
                "UNAUTHENTICATED",
            )
            .await;
    }
    // Over budget: even the right password is not checked now.
    let error = server
        .fails(
            None,
            LOGIN,
            json!({ "u": "victim", "p": "password-123" }),
            "RATE_LIMITED",
        )
        .await;
    let retry = error["extensions"]["retryAfterMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retryAfterMs in {error}"));
    assert!((1..=12_000).contains(&retry), "{error}");
    // Another account has its own budget.
    let data = server
        .ok(
            None,
            LOGIN,
            json!({ "u": "bystander", "p": "password-123" }),
        )
        .await;
    assert!(data["login"]["token"].is_string());
    server.stop().await;
}

/// Every refused sign-in, whatever the reason, is answered after the configured delay, so a
/// guesser's loop waits on the server instead of spinning its cores; the right password is not
/// held back.
#[tokio::test]
async fn refused_sign_ins_are_answered_after_the_delay() {
    let delay = Duration::from_millis(400);
    let server = limited(RateLimitConfig {
        logins_per_account: Budget::per_minute(2, 2),
        failed_login_delay: delay,
        ..RateLimitConfig::unlimited()
    })
    .await;
    server.register("victim").await;
    let attempts = [
        ("victim", "wrong-password", "UNAUTHENTICATED"),
        ("nobody_here", "password-123", "UNAUTHENTICATED"),
        ("Not A Name!", "password-123", "UNAUTHENTICATED"),
        ("victim", "short", "UNAUTHENTICATED"),
        ("victim", "wrong-again", "UNAUTHENTICATED"),
        ("victim", "password-123", "RATE_LIMITED"),
    ];
    for (user, password, expected) in attempts {
        let started = Instant::now();
        server
            .fails(None, LOGIN, json!({ "u": user, "p": password }), expected)
            .await;
        assert!(
            started.elapsed() >= delay,
            "{user}/{password}: answered {expected} after {:?}, before the {delay:?} delay",
            started.elapsed()
        );
    }
    // The right password of an account with budget left signs in.
    server.register("other").await;
    let data = server
        .ok(None, LOGIN, json!({ "u": "other", "p": "password-123" }))
        .await;
    assert!(data["login"]["token"].is_string(), "{data}");
    server.stop().await;
}

#[tokio::test]
async fn password_guesses_from_one_address_are_limited_across_accounts() {
    let server = limited(RateLimitConfig {
        logins_per_ip: Budget::per_minute(3, 3),
        ..RateLimitConfig::unlimited()
    })
    .await;
    for i in 0..3 {
        server
            .fails(
                None,
                LOGIN,
                json!({ "u": format!("user_{i}"), "p": "password-123" }),
                "UNAUTHENTICATED",
            )
            .await;
    }
    server
        .fails(
            None,
            LOGIN,
            json!({ "u": "user_9", "p": "password-123" }),
            "RATE_LIMITED",
        )
        .await;
    server.stop().await;
}

#[tokio::test]
async fn registrations_sends_and_requests_have_budgets() {
    let server = limited(RateLimitConfig {
        registrations_per_ip: Budget::per_minute(2, 2),
        sends_per_user: Budget::per_minute(3, 3),
        ..RateLimitConfig::unlimited()
    })
    .await;
    let ann = server.register("ann").await;
    server.register("bob").await;
    server
        .fails(
            None,
            "mutation { register(username: \"carl\", password: \"password-123\") { token } }",
            json!({}),
            "RATE_LIMITED",
        )
        .await;
    let room = server.create_room(&ann, "general", &[]).await;
    for i in 0..3 {
        server.send(&ann, &room, "hello", &format!("c{i}")).await;
    }
    let before = server.event_count().await;
    let error = server
        .fails(
            Some(&ann.token),
            SEND,
            json!({ "r": room, "b": "spam", "c": "c9" }),
            "RATE_LIMITED",
        )
        .await;
    assert!(error["extensions"]["retryAfterMs"].as_u64().unwrap() > 0);
    assert_eq!(
        server.event_count().await,
        before,
        "a refused send stores nothing"
    );
    server.stop().await;

    // Whole requests per address: HTTP 429 with Retry-After.
    let server = limited(RateLimitConfig {
        requests_per_ip: Budget::per_minute(5, 5),
        ..RateLimitConfig::unlimited()
    })
    .await;
    for _ in 0..5 {
        server.ok(None, "{ __typename }", json!({})).await;
    }
    let response = reqwest::Client::new()
        .post(server.url("/graphql"))
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry_after));
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body), "RATE_LIMITED");
    assert!(
        body["errors"][0]["extensions"]["retryAfterMs"]
            .as_u64()
            .unwrap()
            > 0
    );
    server.stop().await;
}

// ---- No leaks -----------------------------------------------------------------------------

#[tokio::test]
async fn an_invitee_sees_the_room_but_not_its_messages() {
    let server = TestServer::start(Store::Memory).await;
    let host = server.register("host").await;
    let guest = server.register("guest").await;
    let room = server.create_room(&host, "secret", &[&guest]).await;
    for i in 1..=3 {
        server
            .send(&host, &room, &format!("secret {i}"), &format!("c{i}"))
            .await;
    }
    let seen = server
        .ok(
            Some(&guest.token),
            "query($r: ID!) { room(id: $r) { name lastMessage { body } unreadCount } }",
            json!({ "r": room }),
        )
        .await;
    assert_eq!(seen["room"]["name"], "secret");
    assert_eq!(seen["room"]["lastMessage"], Value::Null, "{seen}");
    assert_eq!(seen["room"]["unreadCount"], 0);
    for position in 1..=12 {
        let (_, body) = server
            .post(
                Some(&guest.token),
                "query($r: ID!, $p: Int) { room(id: $r, atPosition: $p) { lastMessage { body } } }",
                json!({ "r": room, "p": position }),
            )
            .await;
        assert_eq!(code(&body), "FORBIDDEN", "position {position}: {body}");
    }
    // A member sees them; after leaving, no more.
    let member_view = server
        .ok(
            Some(&host.token),
            "query($r: ID!) { room(id: $r) { lastMessage { body } } }",
            json!({ "r": room }),
        )
        .await;
    assert_eq!(member_view["room"]["lastMessage"]["body"], "secret 3");
    let left = server
        .ok(
            Some(&host.token),
            "mutation($r: ID!) { leaveRoom(roomId: $r) { lastMessage { body } } }",
            json!({ "r": room }),
        )
        .await;
    assert_eq!(left["leaveRoom"]["lastMessage"], Value::Null);
    server.stop().await;
}

#[tokio::test]
async fn roles_are_shown_to_the_user_and_admins_only() {
    let server = TestServer::start(Store::Memory).await;
    let boss = server.register("boss").await;
    let nosy = server.register("nosy").await;
    let boss_id = parley_domain::UserId::parse(&boss.id).unwrap();
    server
        .app
        .commands
        .grant_role(
            boss_id,
            parley_domain::Role::Admin,
            &parley::commands::CommandMeta::system("test"),
        )
        .await
        .unwrap();
    let roles = "query($u: ID!) { user(id: $u) { roles } }";
    // The read model catches up within milliseconds: wait for the grant to show.
    let mut own = Value::Null;
    for _ in 0..200 {
        own = server
            .ok(Some(&boss.token), "{ me { roles } }", json!({}))
            .await;
        if own["me"]["roles"] == json!(["admin"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(own["me"]["roles"], json!(["admin"]));
    let seen = server
        .ok(Some(&nosy.token), roles, json!({ "u": boss.id }))
        .await;
    assert_eq!(seen["user"]["roles"], json!([]), "{seen}");
    let by_admin = server
        .ok(Some(&boss.token), roles, json!({ "u": boss.id }))
        .await;
    assert_eq!(by_admin["user"]["roles"], json!(["admin"]));
    server.stop().await;
}

// ---- Tokens -------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_for_a_user_who_does_not_exist_here_changes_nothing() {
    let server = TestServer::start(Store::Postgres).await;
    let ghost = server
        .app
        .tokens
        .issue(parley_domain::UserId::new())
        .unwrap();
    let (status, body) = server
        .post(
            Some(&ghost),
            "mutation { createRoom(name: \"ghost town\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(code(&body), "UNAUTHENTICATED");
    assert_eq!(server.event_count().await, 0, "no RoomCreated was stored");

    // A token of another deployment (same secret, another audience) is refused too.
    let real = server.register("real").await;
    let elsewhere = parley::auth::Tokens::new(&SECRET.into())
        .for_audience("staging")
        .issue(parley_domain::UserId::parse(&real.id).unwrap())
        .unwrap();
    let (status, _) = server
        .post(Some(&elsewhere), "{ me { id } }", json!({}))
        .await;
    assert_eq!(status, 401);
    // And on the WebSocket.
    let mut socket = open_socket(server.addr, "graphql-transport-ws", None).await;
    socket
        .send(Message::Text(
            json!({ "type": "connection_init", "payload": { "token": ghost } })
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    assert_eq!(closed(&mut socket).await.code, 4403);
    server.stop().await;
}

// ---- Bad input ----------------------------------------------------------------------------

#[tokio::test]
async fn nul_characters_are_bad_input_and_store_nothing() {
    let server = TestServer::start(Store::Postgres).await;
    let ann = server.register("ann").await;
    let room = server.create_room(&ann, "general", &[]).await;
    // The same text with clean variables first: its parsed document is then cached, and the
    // checks still run on what the cache returns.
    server
        .ok(
            Some(&ann.token),
            SEND,
            json!({ "r": room, "b": "clean", "c": "c0" }),
        )
        .await;
    let before = server.event_count().await;
    let cases = [
        (SEND, json!({ "r": room, "b": "a\u{0}b", "c": "c1" })),
        (SEND, json!({ "r": room, "b": "fine", "c": "c\u{0}" })),
        (
            "mutation($n: String!) { createRoom(name: $n) { id } }",
            json!({ "n": "nul\u{0}room" }),
        ),
        (
            "mutation($u: String!) { register(username: $u, password: \"password-123\") { token } }",
            json!({ "u": "a\u{0}b" }),
        ),
        (
            "mutation { register(username: \"abc\", password: \"pass\\u0000word\") { token } }",
            json!({}),
        ),
        (
            "{ events(eventTypes: [\"Message\\u0000Sent\"]) { hasMore } }",
            json!({}),
        ),
    ];
    for (query, variables) in cases {
        let (_, body) = server
            .post(Some(&ann.token), query, variables.clone())
            .await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{query} {variables}: {body}");
    }
    assert_eq!(server.event_count().await, before, "nothing was stored");
    server.stop().await;
}

#[tokio::test]
async fn a_client_request_id_is_kept_only_when_sane() {
    let server = TestServer::start(Store::Postgres).await;
    let send_with = |id: String| {
        let url = server.url("/graphql");
        async move {
            reqwest::Client::new()
                .post(url)
                .header("x-request-id", id)
                .json(&json!({ "query": "mutation($u: String!) { register(username: $u, password: \"password-123\") { token } }", "variables": { "u": format!("u{}", uuid::Uuid::new_v4().simple()).chars().take(20).collect::<String>() } }))
                .send()
                .await
                .unwrap()
        }
    };
    let good = send_with("trace-abc.123:x_y".to_owned()).await;
    assert_eq!(good.headers()["x-request-id"], "trace-abc.123:x_y");
    let long = send_with("x".repeat(5000)).await;
    let echoed = long.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "replaced: {echoed}");
    send_with("has spaces and <tags>".to_owned()).await;
    let pool = &server.db.as_ref().unwrap().pool;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT metadata->>'request_id' FROM events WHERE event_type = 'UserRegistered' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], "trace-abc.123:x_y");
    assert_eq!(ids[1], echoed);
    assert!(uuid::Uuid::parse_str(&ids[2]).is_ok(), "{ids:?}");
    server.stop().await;
}

#[tokio::test]
async fn graphql_ws_close_codes_follow_the_protocol() {
    let server = TestServer::start(Store::Memory).await;
    let ann = server.register("ann").await;
    let room = server.create_room(&ann, "general", &[]).await;
    let subscribe = |id: &str| {
        json!({ "id": id, "type": "subscribe", "payload": { "query": "subscription($r: ID!) { messages(roomId: $r) { seq } }", "variables": { "r": room } } })
            .to_string()
    };
    // Subscribe before connection_init: 4401 Unauthorized.
    let mut socket = open_socket(server.addr, "graphql-transport-ws", None).await;
    socket
        .send(Message::Text(subscribe("1").into()))
        .await
        .unwrap();
    assert_eq!(closed(&mut socket).await.code, 4401);

    // The same id twice while the first runs: 4409 Subscriber already exists.
    let mut client = WsClient::connect(server.addr, &ann.token).await;
    client
        .subscribe(
            "a",
            "subscription($r: ID!) { messages(roomId: $r) { seq } }",
            json!({ "r": room }),
        )
        .await;
    // Once it has completed, the id is free again.
    client.unsubscribe("a").await;
    assert_eq!(client.message("a").await["type"], "complete");
    client
        .subscribe(
            "a",
            "subscription($r: ID!) { messages(roomId: $r, after: 0) { seq } }",
            json!({ "r": room }),
        )
        .await;
    server.send(&ann, &room, "hi", "c1").await;
    assert_eq!(client.next("a").await["messages"]["seq"], 1);
    client
        .subscribe(
            "a",
            "subscription($r: ID!) { messages(roomId: $r) { seq } }",
            json!({ "r": room }),
        )
        .await;
    assert_eq!(client.closed().await.code, 4409);
    server.stop().await;
}

// ---- Connections --------------------------------------------------------------------------

/// Reads until the server closes the connection; panics if it stays open for `within`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) {
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => continue, // a 408 or similar before the close
            Err(_) => panic!("the server kept the connection open for {within:?}"),
        }
    }
}

#[tokio::test]
async fn slow_and_idle_connections_are_dropped_and_the_cap_holds() {
    let app = App::start_with(
        EventLog::memory(),
        SECRET.into(),
        AppOptions::local(fast_projector()),
    );
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(2),
        max_connections: Some(2),
    };
    let server = TestServer::on_app(app, None, WsConfig::default(), limits).await;
    // Two connections take both slots: one trickles a header, one says nothing.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // A third client waits for a slot, and gets one when the server drops the other two.
    let third = tokio::spawn({
        let url = server.url("/healthz");
        async move { reqwest::get(url).await.map(|r| r.status().as_u16()) }
    });
    closed_by_server(&mut slow, Duration::from_secs(10)).await;
    closed_by_server(&mut idle, Duration::from_secs(10)).await;
    assert_eq!(
        third.await.unwrap().expect("the third client is served"),
        200
    );
    server.stop().await;
}

// ---- The store down -------------------------------------------------------------------------

/// A PostgreSQL server of this test's own, on a free port, that the test may stop.
struct OwnPostgres {
    dir: std::path::PathBuf,
    port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL tool; as root (which PostgreSQL refuses) run as the `postgres` user.
fn pg_command(tool: &str) -> std::process::Command {
    let path = format!("{PG_BIN}/{tool}");
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--", &path]);
        command
    } else {
        std::process::Command::new(path)
    }
}

impl OwnPostgres {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("parley-pg-{}", uuid::Uuid::new_v4().simple()));
        let run = |cmd: &mut std::process::Command| {
            let output = cmd.output().unwrap_or_else(|e| {
                panic!("this test needs PostgreSQL 15 binaries in {PG_BIN}: {e}")
            });
            assert!(
                output.status.success(),
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(pg_command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&dir));
        run(pg_command("pg_ctl")
            .arg("-D")
            .arg(&dir)
            .args(["-l"])
            .arg(dir.join("log"))
            .args(["-w", "-o"])
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                dir.display()
            ))
            .arg("start"));
        Self { dir, port }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn stop(&self) {
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn with_the_store_down_requests_fail_fast_as_unavailable() {
    let pg = OwnPostgres::start();
    let timeouts = parley::config::DbTimeouts {
        acquire: Duration::from_millis(800),
        ..parley::config::DbTimeouts::default()
    };
    let pool = parley::app::connect_server(pg.url().parse().unwrap(), 4, &timeouts)
        .await
        .expect("connecting to the test's own PostgreSQL");
    parley::app::MIGRATOR.run(&pool).await.unwrap();
    let settings: (String, String, String) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(settings, ("15s".into(), "5s".into(), "15s".into()));
    let app = App::start_with(
        EventLog::postgres(PostgresLog::new(pool)),
        SECRET.into(),
        AppOptions::local(fast_projector()),
    );
    let server = TestServer::on_app(app, None, WsConfig::default(), HttpLimits::default()).await;
    let ann = server.register("ann").await;
    let room = server.create_room(&ann, "general", &[]).await;
    server.send(&ann, &room, "before", "c1").await;

    pg.stop();
    let mut codes = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..3 {
        let started = Instant::now();
        let (_, body) = server
            .post(
                Some(&ann.token),
                SEND,
                json!({ "r": room, "b": "during", "c": format!("d{i}") }),
            )
            .await;
        slowest = slowest.max(started.elapsed());
        codes.push(code(&body).to_owned());
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("retry"), "{body}");
    }
    assert_eq!(codes, ["UNAVAILABLE"; 3]);
    eprintln!("slowest UNAVAILABLE answer with the store down: {slowest:?}");
    // Not the 10 s hang of before (a generous bound, not a speed target).
    assert!(slowest < Duration::from_secs(8), "took {slowest:?}");
    server.stop().await;
}

// ---- Metrics ------------------------------------------------------------------------------

#[tokio::test]
async fn the_cheap_lag_estimate_agrees_with_the_exact_status() {
    // No projector runs here: every event stays unapplied, so the lag is known.
    let db = support::TestDb::new().await;
    let log = EventLog::postgres(PostgresLog::new(db.pool.clone()));
    let commands = parley::commands::CommandBus::new(log);
    let meta = parley::commands::CommandMeta::system("test");
    for i in 0..7 {
        commands
            .register_user(&format!("user_{i}"), "x".into(), &meta)
            .await
            .unwrap();
    }
    let models = parley_projections::ReadModels::postgres(
        parley_projections::postgres::PgReadModels::new(db.pool.clone()),
    );
    let exact = models.status().await.unwrap();
    let cheap = models.lag_estimate().await.unwrap();
    assert_eq!(exact.len(), cheap.len());
    for (exact, cheap) in exact.iter().zip(&cheap) {
        assert_eq!(
            (&exact.name, exact.checkpoint, exact.lag_events),
            (&cheap.name, cheap.checkpoint, cheap.lag_events)
        );
        assert_eq!(cheap.lag_events, 7);
        assert!(
            (exact.lag_ms - cheap.lag_ms).abs() < 1000,
            "{exact:?} {cheap:?}"
        );
    }
}
