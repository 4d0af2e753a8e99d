//! Finding things, end to end on both stores: full-text `search` over the caller's rooms
//! (never another room's messages, never deleted or erased text) and `publicRooms` paged.

#[macro_use]
mod support;

use serde_json::{json, Value};
use support::api::{Session, Store, TestServer};

on_both_stores!(
    search_finds_words_only_in_the_callers_rooms_and_never_erased_text,
    public_rooms_are_paged_most_recent_activity_first,
);

const SEARCH: &str = "query($q: String!, $r: ID, $f: Int) { search(query: $q, roomId: $r, first: $f) { seq body roomId } }";
const PUBLIC: &str = "query($f: Int, $a: String) { publicRooms(first: $f, after: $a) { id name lastMessage { body } } }";

async fn search(
    server: &TestServer,
    who: &Session,
    query: &str,
    room: Option<&str>,
) -> Vec<String> {
    let found = server
        .ok(Some(&who.token), SEARCH, json!({ "q": query, "r": room }))
        .await;
    found["search"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["body"].as_str().expect("body").to_owned())
        .collect()
}

async fn search_finds_words_only_in_the_callers_rooms_and_never_erased_text(store: Store) {
    let server = TestServer::start(store).await;
    let admin = server.register("admin").await;
    let admin_id = parley_domain::UserId::parse(&admin.id).expect("id");
    server
        .app
        .commands
        .grant_role(
            admin_id,
            parley_domain::Role::Admin,
            &parley::commands::CommandMeta::system("test"),
        )
        .await
        .expect("grant");
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let zed = server.register("zed").await;
    let ours = server.create_room(&alice, "ours", &[]).await;
    let other = server.create_room(&alice, "other", &[]).await;
    let theirs = server.create_room(&zed, "theirs", &[]).await;
    server.join(&bob, &ours).await;
    server.join(&zed, &ours).await;

    server.send(&alice, &ours, "Lunch at noon?", "a1").await; // 1
    server
        .send(&bob, &ours, "lunch lunch LUNCH, yes", "b1")
        .await; // 2
    server.send(&alice, &ours, "the budget is due", "a2").await; // 3
    server.send(&zed, &ours, "lunch with zed", "z1").await; // 4
    server.send(&alice, &other, "lunch elsewhere", "a3").await;
    server.send(&zed, &theirs, "secret lunch plans", "z2").await;
    // Search reads the read models, like `rooms`: wait until they hold the newest send.
    projected(&server, &zed, &theirs).await;

    // Every word, whole and case-insensitively; the best match first, then the newest.
    assert_eq!(
        search(&server, &bob, "lunch", None).await,
        ["lunch lunch LUNCH, yes", "lunch with zed", "Lunch at noon?"],
        "bob's rooms only, ranked"
    );
    assert_eq!(
        search(&server, &bob, "noon LUNCH", None).await,
        ["Lunch at noon?"]
    );
    assert!(
        search(&server, &bob, "lunc", None).await.is_empty(),
        "whole words"
    );
    assert!(search(&server, &bob, "dinner", None).await.is_empty());
    assert!(search(&server, &bob, "?!", None).await.is_empty());
    // Alice is in two rooms; `roomId` narrows to one.
    assert_eq!(
        search(&server, &alice, "lunch", None).await.len(),
        4,
        "ours and other"
    );
    assert_eq!(
        search(&server, &alice, "lunch", Some(&other)).await,
        ["lunch elsewhere"]
    );
    server
        .fails(
            Some(&bob.token),
            SEARCH,
            json!({ "q": "lunch", "r": theirs }),
            "FORBIDDEN",
        )
        .await;

    // An edit is found by its new words only; a deleted message and an erased user's
    // messages are found by none.
    server
        .ok(
            Some(&alice.token),
            "mutation($r: ID!) { editMessage(roomId: $r, seq: 3, body: \"the forecast is due\") { seq } }",
            json!({ "r": ours }),
        )
        .await;
    assert!(search(&server, &bob, "budget", None).await.is_empty());
    assert_eq!(
        search(&server, &bob, "forecast", None).await,
        ["the forecast is due"]
    );
    server
        .ok(
            Some(&bob.token),
            "mutation($r: ID!) { deleteMessage(roomId: $r, seq: 2) { deleted } }",
            json!({ "r": ours }),
        )
        .await;
    server
        .ok(
            Some(&admin.token),
            "mutation($u: ID!) { eraseUser(userId: $u) }",
            json!({ "u": zed.id }),
        )
        .await;
    // The erasure is projected asynchronously: wait until its words are gone.
    let mut left = Vec::new();
    for _ in 0..500 {
        left = search(&server, &bob, "lunch", None).await;
        if left.len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(left, ["Lunch at noon?"]);

    // Bad input changes nothing and says why.
    for (variables, what) in [
        (json!({ "q": "   " }), "blank"),
        (json!({ "q": "x".repeat(201) }), "too long"),
        (json!({ "q": "a\u{0}b" }), "NUL"),
        (json!({ "q": "lunch", "f": 0 }), "first 0"),
        (json!({ "q": "lunch", "f": 101 }), "first 101"),
    ] {
        let (_, body) = server.post(Some(&bob.token), SEARCH, variables).await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{what}: {body}"
        );
    }
    server
        .fails(None, SEARCH, json!({ "q": "lunch" }), "UNAUTHENTICATED")
        .await;
    server.stop().await;
}

/// Waits until the read models hold every message sent so far: a history page waits for
/// the room's newest message (read your writes), and the projector goes in log order.
async fn projected(server: &TestServer, who: &Session, newest_room: &str) {
    server
        .ok(
            Some(&who.token),
            "query($r: ID!) { messages(roomId: $r) { hasMore } }",
            json!({ "r": newest_room }),
        )
        .await;
}

fn names(page: &Value) -> Vec<&str> {
    page["publicRooms"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect()
}

async fn public_rooms_are_paged_most_recent_activity_first(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut rooms = Vec::new();
    for name in ["one", "two", "three", "four"] {
        rooms.push(server.create_room(&alice, name, &[]).await);
    }
    server
        .ok(
            Some(&alice.token),
            "mutation { createRoom(name: \"hidden\", visibility: PRIVATE) { id } }",
            json!({}),
        )
        .await;
    // Activity moves "two" to the top.
    server.send(&alice, &rooms[1], "news", "n1").await;
    projected(&server, &alice, &rooms[1]).await;

    let all = server
        .ok(Some(&bob.token), PUBLIC, json!({ "f": 10 }))
        .await;
    assert_eq!(names(&all), ["two", "four", "three", "one"], "{all}");
    assert!(
        all["publicRooms"][0]["lastMessage"].is_null(),
        "a non-member sees no messages"
    );
    let first = server.ok(Some(&bob.token), PUBLIC, json!({ "f": 2 })).await;
    assert_eq!(names(&first), ["two", "four"]);
    let cursor = first["publicRooms"][1]["id"].as_str().expect("id");
    let next = server
        .ok(Some(&bob.token), PUBLIC, json!({ "f": 2, "a": cursor }))
        .await;
    assert_eq!(names(&next), ["three", "one"]);
    let last = next["publicRooms"][1]["id"].as_str().expect("id");
    let end = server
        .ok(Some(&bob.token), PUBLIC, json!({ "f": 2, "a": last }))
        .await;
    assert!(names(&end).is_empty());
    // A member sees the last message.
    let mine = server
        .ok(Some(&alice.token), PUBLIC, json!({ "f": 1 }))
        .await;
    assert_eq!(mine["publicRooms"][0]["lastMessage"]["body"], "news");

    for variables in [
        json!({ "a": "not-an-id" }),
        json!({ "a": parley_domain::RoomId::new().to_string() }),
        json!({ "f": 0 }),
    ] {
        let (_, body) = server.post(Some(&bob.token), PUBLIC, variables).await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{body}"
        );
    }
    server.stop().await;
}
