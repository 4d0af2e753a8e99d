//! Messages people can change, end to end over real HTTP and WebSocket on both stores:
//! replies, edits, reactions, deletions with real erasure (the deleted text is in no table,
//! no `events` page, no export and no time travel), and `messageUpdates` live across two
//! instances.

#[macro_use]
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::Row;
use support::api::{a_and_b_behind_a_proxy, Proxied, Session, Store, TestServer, WsClient};

on_both_stores!(
    edits_replies_and_reactions_show_in_history_and_follow_the_rules,
    a_deleted_message_is_erased_from_history_the_log_and_time_travel,
    an_erased_user_leaves_no_name_and_no_text_anywhere,
    message_updates_replays_after_a_position_then_goes_live,
);

const FIELDS: &str =
    "seq body deleted editedAt position replyTo { seq body } reactions { emoji count mine }";

fn mutation(name: &str, args: &str) -> String {
    format!("mutation($r: ID!, $s: Int!{args}) {{ {name} {{ {FIELDS} }} }}")
}

async fn edit(server: &TestServer, who: &Session, room: &str, seq: i64, body: &str) -> Value {
    let query = mutation(
        "editMessage(roomId: $r, seq: $s, body: $b)",
        ", $b: String!",
    );
    let data = server
        .ok(
            Some(&who.token),
            &query,
            json!({ "r": room, "s": seq, "b": body }),
        )
        .await;
    data["editMessage"].clone()
}

async fn react(server: &TestServer, who: &Session, room: &str, seq: i64, emoji: &str) -> Value {
    let query = mutation("react(roomId: $r, seq: $s, emoji: $e)", ", $e: String!");
    let data = server
        .ok(
            Some(&who.token),
            &query,
            json!({ "r": room, "s": seq, "e": emoji }),
        )
        .await;
    data["react"].clone()
}

async fn unreact(server: &TestServer, who: &Session, room: &str, seq: i64, emoji: &str) -> Value {
    let query = mutation("unreact(roomId: $r, seq: $s, emoji: $e)", ", $e: String!");
    let data = server
        .ok(
            Some(&who.token),
            &query,
            json!({ "r": room, "s": seq, "e": emoji }),
        )
        .await;
    data["unreact"].clone()
}

async fn delete(server: &TestServer, who: &Session, room: &str, seq: i64) -> Value {
    let query = mutation("deleteMessage(roomId: $r, seq: $s)", "");
    let data = server
        .ok(Some(&who.token), &query, json!({ "r": room, "s": seq }))
        .await;
    data["deleteMessage"].clone()
}

async fn history(server: &TestServer, who: &Session, room: &str) -> Vec<Value> {
    let query = format!("query($r: ID!) {{ messages(roomId: $r) {{ messages {{ {FIELDS} }} }} }}");
    let data = server
        .ok(Some(&who.token), &query, json!({ "r": room }))
        .await;
    data["messages"]["messages"]
        .as_array()
        .expect("a page")
        .clone()
}

async fn reply(server: &TestServer, who: &Session, room: &str, body: &str, to: i64) -> Value {
    let query = format!(
        "mutation($r: ID!, $b: String!, $t: Int) {{ sendMessage(roomId: $r, body: $b, clientMsgId: $b, replyTo: $t) {{ {FIELDS} }} }}"
    );
    let data = server
        .ok(
            Some(&who.token),
            &query,
            json!({ "r": room, "b": body, "t": to }),
        )
        .await;
    data["sendMessage"].clone()
}

async fn edits_replies_and_reactions_show_in_history_and_follow_the_rules(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = server.create_room(&alice, "general", &[]).await;
    server.join(&bob, &room).await;
    server.send(&alice, &room, "first", "a1").await;
    server.send(&bob, &room, "second", "b1").await;

    let answer = reply(&server, &bob, &room, "answering", 1).await;
    assert_eq!(answer["seq"], 3);
    assert_eq!(answer["replyTo"], json!({ "seq": 1, "body": "first" }));

    let edited = edit(&server, &bob, &room, 2, "second, fixed").await;
    assert_eq!(edited["body"], "second, fixed");
    assert!(edited["editedAt"].is_string(), "{edited}");

    react(&server, &bob, &room, 1, "👍").await;
    let again = react(&server, &bob, &room, 1, "👍").await;
    assert_eq!(
        again["reactions"],
        json!([{ "emoji": "👍", "count": 1, "mine": true }]),
        "adding the same emoji twice is a no-op"
    );
    react(&server, &alice, &room, 1, "👍").await;
    let both = react(&server, &alice, &room, 1, "🎉").await;
    assert_eq!(
        both["reactions"],
        json!([
            // In emoji (code point) order: U+1F389 before U+1F44D.
            { "emoji": "🎉", "count": 1, "mine": true },
            { "emoji": "👍", "count": 2, "mine": true },
        ])
    );
    let taken_back = unreact(&server, &alice, &room, 1, "🎉").await;
    assert_eq!(
        taken_back["reactions"],
        json!([{ "emoji": "👍", "count": 2, "mine": true }])
    );
    let never_given = unreact(&server, &bob, &room, 1, "🎉").await;
    assert_eq!(never_given["reactions"], taken_back["reactions"]);
    let position_of_first = never_given["position"].as_i64().expect("position");

    // History shows the current state, each caller's `mine` their own.
    let page = history(&server, &bob, &room).await;
    assert_eq!(page.len(), 3);
    assert_eq!(
        page[0]["reactions"],
        json!([{ "emoji": "👍", "count": 2, "mine": true }])
    );
    assert_eq!(page[0]["position"], position_of_first);
    assert_eq!(page[1]["body"], "second, fixed");
    assert!(page[1]["editedAt"].is_string());
    assert_eq!(page[2]["replyTo"]["seq"], 1);
    assert!(page[0]["editedAt"].is_null());
    assert!(page[0]["replyTo"].is_null());

    // The rules, each with its typed error, and nothing changes.
    let events_before = server.event_count().await;
    let edit_q = mutation(
        "editMessage(roomId: $r, seq: $s, body: $b)",
        ", $b: String!",
    );
    let react_q = mutation("react(roomId: $r, seq: $s, emoji: $e)", ", $e: String!");
    let delete_q = mutation("deleteMessage(roomId: $r, seq: $s)", "");
    let refusals = [
        (
            &bob,
            edit_q.as_str(),
            json!({ "r": room, "s": 1, "b": "mine now" }),
            "FORBIDDEN",
        ),
        (
            &alice,
            edit_q.as_str(),
            json!({ "r": room, "s": 2, "b": "host edit" }),
            "FORBIDDEN",
        ),
        (
            &bob,
            edit_q.as_str(),
            json!({ "r": room, "s": 2, "b": " " }),
            "BAD_USER_INPUT",
        ),
        (
            &bob,
            edit_q.as_str(),
            json!({ "r": room, "s": 99, "b": "x" }),
            "NOT_FOUND",
        ),
        (
            &carol,
            edit_q.as_str(),
            json!({ "r": room, "s": 2, "b": "x" }),
            "FORBIDDEN",
        ),
        (
            &bob,
            react_q.as_str(),
            json!({ "r": room, "s": 1, "e": "" }),
            "BAD_USER_INPUT",
        ),
        (
            &bob,
            react_q.as_str(),
            json!({ "r": room, "s": 1, "e": "x".repeat(17) }),
            "BAD_USER_INPUT",
        ),
        (
            &carol,
            react_q.as_str(),
            json!({ "r": room, "s": 1, "e": "👍" }),
            "FORBIDDEN",
        ),
        (
            &bob,
            delete_q.as_str(),
            json!({ "r": room, "s": 1 }),
            "FORBIDDEN",
        ),
        (
            &bob,
            delete_q.as_str(),
            json!({ "r": room, "s": -1 }),
            "NOT_FOUND",
        ),
    ];
    for (who, query, variables, code) in refusals {
        server.fails(Some(&who.token), query, variables, code).await;
    }
    let bad_reply = "mutation($r: ID!) { sendMessage(roomId: $r, body: \"x\", clientMsgId: \"bad\", replyTo: 9) { seq } }";
    server
        .fails(
            Some(&bob.token),
            bad_reply,
            json!({ "r": room }),
            "BAD_USER_INPUT",
        )
        .await;
    assert_eq!(
        server.event_count().await,
        events_before,
        "a refusal stores nothing"
    );

    // A deleted message can be neither edited nor reacted to.
    delete(&server, &alice, &room, 2).await;
    server
        .fails(
            Some(&bob.token),
            &edit_q,
            json!({ "r": room, "s": 2, "b": "back" }),
            "CONFLICT",
        )
        .await;
    server
        .fails(
            Some(&bob.token),
            &react_q,
            json!({ "r": room, "s": 2, "e": "👍" }),
            "CONFLICT",
        )
        .await;
    server.stop().await;
}

/// Text no other part of the test writes, to look for after the deletion.
const SECRET: &str = "my-bank-pin-is-8231";

async fn a_deleted_message_is_erased_from_history_the_log_and_time_travel(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, "general", &[]).await;
    server.join(&bob, &room).await;
    server
        .send(&bob, &room, &format!("{SECRET} (first draft)"), "b1")
        .await;
    edit(&server, &bob, &room, 1, &format!("{SECRET} (edited)")).await;
    react(&server, &alice, &room, 1, "😱").await;
    let kept = server
        .send(&alice, &room, "an unrelated message", "a1")
        .await;
    let position_before_delete = history(&server, &bob, &room).await[0]["position"]
        .as_i64()
        .expect("position");

    let gone = delete(&server, &bob, &room, 1).await;
    assert_eq!(gone["body"], "");
    assert_eq!(gone["deleted"], true);
    assert_eq!(gone["reactions"], json!([]));
    let page = history(&server, &alice, &room).await;
    assert_eq!(page[0]["seq"], 1, "a deleted message keeps its seq");
    assert_eq!(page[0]["body"], "");
    assert_eq!(page[1]["body"], kept["body"]);

    // Time travel, at every position of the room's history.
    let at = "query($r: ID!, $p: Int) { room(id: $r, atPosition: $p) { lastMessage { body } } messages(roomId: $r, atPosition: $p) { messages { body } } }";
    for position in 1..=gone["position"].as_i64().expect("position") {
        let (_, body) = server
            .post(Some(&alice.token), at, json!({ "r": room, "p": position }))
            .await;
        assert!(!body.to_string().contains(SECRET), "at {position}: {body}");
    }
    let then = server
        .ok(
            Some(&alice.token),
            at,
            json!({ "r": room, "p": position_before_delete }),
        )
        .await;
    assert_eq!(
        then["room"]["lastMessage"]["body"], "",
        "erased at earlier positions too"
    );

    // The log still tells that a message was sent, edited and deleted, and by whom.
    let analyst = server.register("ana").await;
    let meta = parley::commands::CommandMeta::system("test");
    let analyst_id = parley_domain::UserId::parse(&analyst.id).expect("id");
    server
        .app
        .commands
        .grant_role(analyst_id, parley_domain::Role::Analyst, &meta)
        .await
        .expect("grant");
    let events =
        "query($i: ID) { events(aggregateId: $i, first: 1000) { events { eventType payload } } }";
    let log = server
        .ok(Some(&analyst.token), events, json!({ "i": room }))
        .await;
    let log = log["events"]["events"].as_array().expect("events").clone();
    assert!(!Value::Array(log.clone()).to_string().contains(SECRET));
    let types: Vec<&str> = log.iter().filter_map(|e| e["eventType"].as_str()).collect();
    for kind in [
        "MessageSent",
        "MessageEdited",
        "ReactionAdded",
        "MessageDeleted",
    ] {
        assert!(types.contains(&kind), "{kind} in {types:?}");
    }
    let deletion = log
        .iter()
        .find(|e| e["eventType"] == "MessageDeleted")
        .expect("the deletion");
    assert_eq!(
        deletion["payload"]["MessageDeleted"]["deleted_by"],
        bob.id.as_str()
    );
    let sent = log
        .iter()
        .find(|e| e["eventType"] == "MessageSent")
        .expect("sent");
    assert_eq!(sent["payload"]["MessageSent"]["body"], "");
    let unrelated = log
        .iter()
        .filter(|e| e["eventType"] == "MessageSent")
        .nth(1)
        .expect("the unrelated message");
    assert_eq!(
        unrelated["payload"]["MessageSent"]["body"],
        "an unrelated message"
    );

    if let Some(db) = &server.db {
        nowhere_in_the_database(db, SECRET).await;
        let export = parley_tool(db, &["events", "export"]);
        // Byte-identical after unrelated writes: edits, reactions, a deletion and a message in
        // another room change nothing of what was exported up to here.
        let head = parley_tool(db, &["events", "export", "--format", "csv"])
            .lines()
            .count() as i64
            - 1;
        let up_to = head.to_string();
        let before = parley_tool(db, &["events", "export", "--to", &up_to]);
        let other = server.create_room(&alice, "elsewhere", &[]).await;
        server.send(&alice, &other, "more text", "o1").await;
        edit(&server, &alice, &other, 1, "more text, edited").await;
        react(&server, &alice, &other, 1, "👍").await;
        delete(&server, &alice, &other, 1).await;
        assert_eq!(
            parley_tool(db, &["events", "export", "--to", &up_to]),
            before
        );
        assert!(
            export.contains("MessageDeleted"),
            "the deletion is exported"
        );
        assert!(
            export.contains("an unrelated message"),
            "other text is exported"
        );

        // A rebuild from the log reproduces the read models, deletion, edit and reactions.
        let before = history(&server, &alice, &room).await;
        parley_tool(db, &["projections", "rebuild"]);
        assert_eq!(history(&server, &alice, &room).await, before);
    }
    server.stop().await;
}

/// Every table of the database, row by row as text, and the analysts' export: `needle`
/// appears nowhere.
async fn nowhere_in_the_database(db: &support::TestDb, needle: &str) {
    let tables = sqlx::query(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("tables");
    assert!(tables.len() >= 5, "the read models and the log");
    for table in tables {
        let table: String = table.get(0);
        let found: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{table}\" t WHERE t::text LIKE '%' || $1 || '%'"
        ))
        .bind(needle)
        .fetch_one(&db.pool)
        .await
        .expect("search");
        assert_eq!(found, 0, "{needle:?} is still in {table}");
    }
    let export = parley_tool(db, &["events", "export"]);
    assert!(export.contains("MessageSent"), "the log is exported");
    assert!(!export.contains(needle), "{needle:?} is exported");
}

/// Runs the `parley` binary on the test's database; returns its stdout (asserting success).
fn parley_tool(db: &support::TestDb, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .expect("running parley");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "parley {args:?}: {stderr}");
    String::from_utf8(output.stdout).expect("utf-8")
}

async fn an_erased_user_leaves_no_name_and_no_text_anywhere(store: Store) {
    let server = TestServer::start(store).await;
    let admin = server.register("admin").await;
    let meta = parley::commands::CommandMeta::system("test");
    let admin_id = parley_domain::UserId::parse(&admin.id).expect("id");
    server
        .app
        .commands
        .grant_role(admin_id, parley_domain::Role::Admin, &meta)
        .await
        .expect("grant");
    let alice = server.register("alice").await;
    let zed = server.register("zed_the_erased").await;
    let room = server.create_room(&alice, "general", &[]).await;
    server.join(&zed, &room).await;
    server.send(&zed, &room, "zed-wrote-this-once", "z1").await;
    edit(&server, &zed, &room, 1, "zed-wrote-this-twice").await;
    server.send(&alice, &room, "alice stays", "a1").await;

    let erase = "mutation($u: ID!) { eraseUser(userId: $u) }";
    server
        .fails(
            Some(&alice.token),
            erase,
            json!({ "u": zed.id }),
            "FORBIDDEN",
        )
        .await;
    let done = server
        .ok(Some(&admin.token), erase, json!({ "u": zed.id }))
        .await;
    assert_eq!(done["eraseUser"], true);
    let again = server
        .ok(Some(&admin.token), erase, json!({ "u": zed.id }))
        .await;
    assert_eq!(again["eraseUser"], true, "erasing again is a no-op");
    // The erased user's token (used above, so known to this instance) no longer signs in.
    server
        .fails(
            Some(&zed.token),
            "query { me { id } }",
            json!({}),
            "UNAUTHENTICATED",
        )
        .await;

    let page = history(&server, &alice, &room).await;
    assert_eq!(page[0]["body"], "");
    assert_eq!(page[0]["deleted"], true);
    assert_eq!(page[1]["body"], "alice stays");
    let who = "query($u: ID!) { user(id: $u) { username } }";
    let shown = server
        .ok(Some(&alice.token), who, json!({ "u": zed.id }))
        .await;
    let shown = shown["user"]["username"]
        .as_str()
        .expect("a name")
        .to_owned();
    assert!(!shown.contains("zed"), "{shown}");
    let login =
        "mutation { login(username: \"zed_the_erased\", password: \"password-123\") { token } }";
    server
        .fails(None, login, json!({}), "UNAUTHENTICATED")
        .await;
    let (_, body) = server
        .post(Some(&alice.token), "query($r: ID!, $p: Int) { messages(roomId: $r, atPosition: $p) { messages { body sender { username } } } }", json!({ "r": room, "p": 9 }))
        .await;
    assert!(!body.to_string().contains("zed"), "time travel: {body}");

    if let Some(db) = &server.db {
        for needle in ["zed_the_erased", "zed-wrote-this"] {
            nowhere_in_the_database(db, needle).await;
        }
        // The CLI does the same for an operator, by username.
        let bob = server.register("bob_by_cli").await;
        server.join(&bob, &room).await;
        server.send(&bob, &room, "bob-wrote-this", "b1").await;
        let said = parley_tool(db, &["users", "erase", "bob_by_cli"]);
        assert!(said.contains("erased user"), "{said}");
        // The CLI appends the event; the server's projector applies it: wait for that.
        let by_name = "query($n: String!) { userByName(username: $n) { id } }";
        for _ in 0..500 {
            let found = server
                .ok(Some(&alice.token), by_name, json!({ "n": "bob_by_cli" }))
                .await;
            if found["userByName"].is_null() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for needle in ["bob_by_cli", "bob-wrote-this"] {
            nowhere_in_the_database(db, needle).await;
        }
        // The name is free again.
        server.register("bob_by_cli").await;
    }
    server.stop().await;
}

const UPDATES: &str = "subscription($r: ID!, $a: Int) { messageUpdates(roomId: $r, after: $a) { seq body deleted position reactions { emoji count } } }";

async fn message_updates_replays_after_a_position_then_goes_live(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, "general", &[]).await;
    server.join(&bob, &room).await;
    server.send(&alice, &room, "one", "a1").await;
    server.send(&alice, &room, "two", "a2").await;
    let first = edit(&server, &alice, &room, 1, "one, edited").await;
    let after = first["position"].as_i64().expect("position");
    react(&server, &bob, &room, 2, "👍").await;

    // Replay: only what changed after `after` (the reaction), then live.
    let mut ws = WsClient::connect(server.addr, &bob.token).await;
    ws.subscribe("u", UPDATES, json!({ "r": room, "a": after }))
        .await;
    let replayed = ws.next("u").await;
    assert_eq!(replayed["messageUpdates"]["seq"], 2);
    assert_eq!(
        replayed["messageUpdates"]["reactions"],
        json!([{ "emoji": "👍", "count": 1 }])
    );
    let replayed_at = replayed["messageUpdates"]["position"]
        .as_i64()
        .expect("position");

    delete(&server, &alice, &room, 1).await;
    let live = ws.next("u").await;
    assert_eq!(live["messageUpdates"]["seq"], 1);
    assert_eq!(live["messageUpdates"]["deleted"], true);
    assert!(
        live["messageUpdates"]["position"]
            .as_i64()
            .expect("position")
            > replayed_at
    );

    // A new message is not an update; its later edit is.
    server.send(&alice, &room, "three", "a3").await;
    edit(&server, &alice, &room, 3, "three, edited").await;
    let edited = ws.next("u").await;
    assert_eq!(edited["messageUpdates"]["seq"], 3);
    assert_eq!(edited["messageUpdates"]["body"], "three, edited");
    ws.quiet("u", Duration::from_millis(300)).await;
    server.stop().await;
}

/// A subscriber on instance B sees the changes made through instance A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_updates_cross_instances() {
    let (a, b, _proxy) = a_and_b_behind_a_proxy(Proxied::B, None).await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let room = a.create_room(&alice, "general", &[]).await;
    a.join(&bob, &room).await;
    a.send(&alice, &room, "hello", "a1").await;

    let mut ws = WsClient::connect(b.addr, &bob.token).await;
    ws.subscribe("u", UPDATES, json!({ "r": room })).await;
    b.wait_for_feeds(&room, 1).await;
    edit(&a, &alice, &room, 1, "hello, edited").await;
    let edited = ws.next("u").await;
    assert_eq!(edited["messageUpdates"]["body"], "hello, edited");
    react(&a, &bob, &room, 1, "🎉").await;
    let reacted = ws.next("u").await;
    assert_eq!(
        reacted["messageUpdates"]["reactions"],
        json!([{ "emoji": "🎉", "count": 1 }])
    );
    delete(&a, &alice, &room, 1).await;
    let deleted = ws.next("u").await;
    assert_eq!(deleted["messageUpdates"]["deleted"], true);
    assert_eq!(deleted["messageUpdates"]["body"], "");
    b.stop().await;
    a.stop().await;
}
