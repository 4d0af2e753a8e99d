//! Running rooms, end to end on both stores: finding a user by name, inviting them after the
//! room was created, renaming a room and setting its topic.

#[macro_use]
mod support;

use serde_json::json;
use support::api::{Store, TestServer, WsClient};

on_both_stores!(
    a_member_finds_a_user_by_name_and_invites_them,
    the_host_renames_the_room_and_sets_its_topic,
);

const INVITE: &str =
    "mutation($r: ID!, $u: ID!) { invite(roomId: $r, userId: $u) { id invited { username } } }";
const BY_NAME: &str = "query($n: String!) { userByName(username: $n) { id username } }";
const MINE: &str = "subscription { notices { kind roomId user { username } } }";

async fn a_member_finds_a_user_by_name_and_invites_them(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = server.create_room(&alice, "general", &[]).await;

    let found = server
        .ok(Some(&alice.token), BY_NAME, json!({ "n": "bob" }))
        .await;
    assert_eq!(
        found["userByName"],
        json!({ "id": bob.id, "username": "bob" })
    );
    let nobody = server
        .ok(Some(&alice.token), BY_NAME, json!({ "n": "nobody" }))
        .await;
    assert!(nobody["userByName"].is_null());
    server
        .fails(None, BY_NAME, json!({ "n": "bob" }), "UNAUTHENTICATED")
        .await;

    // Bob hears of his invitation on his own notices.
    let mut bob_ws = WsClient::connect(server.addr, &bob.token).await;
    bob_ws.subscribe("mine", MINE, json!({})).await;
    let bob_id = parley_domain::UserId::parse(&bob.id).expect("id");
    server
        .wait_for_subscriber(&parley::relay::Channel::User(bob_id))
        .await;
    let invited = server
        .ok(
            Some(&alice.token),
            INVITE,
            json!({ "r": room, "u": bob.id }),
        )
        .await;
    assert_eq!(invited["invite"]["invited"], json!([{ "username": "bob" }]));
    let notice = bob_ws.next("mine").await;
    assert_eq!(notice["notices"]["kind"], "MEMBER_INVITED");
    assert_eq!(notice["notices"]["roomId"], room.as_str());

    let events_before = server.event_count().await;
    for (who, user, code) in [
        (&alice, &bob.id, "CONFLICT"),    // invited already
        (&alice, &alice.id, "CONFLICT"),  // a member
        (&carol, &carol.id, "FORBIDDEN"), // not a member
    ] {
        server
            .fails(
                Some(&who.token),
                INVITE,
                json!({ "r": room, "u": user }),
                code,
            )
            .await;
    }
    let unknown = parley_domain::UserId::new().to_string();
    server
        .fails(
            Some(&alice.token),
            INVITE,
            json!({ "r": room, "u": unknown }),
            "BAD_USER_INPUT",
        )
        .await;
    assert_eq!(
        server.event_count().await,
        events_before,
        "a refusal stores nothing"
    );

    server.join(&bob, &room).await;
    server
        .fails(
            Some(&alice.token),
            INVITE,
            json!({ "r": room, "u": bob.id }),
            "CONFLICT",
        )
        .await;
    server.stop().await;
}

const UPDATE: &str = "mutation($r: ID!, $n: String, $t: String) { updateRoom(roomId: $r, name: $n, topic: $t) { name topic } }";
const NOTICES: &str = "subscription($r: ID) { notices(roomId: $r) { kind text position } }";

async fn the_host_renames_the_room_and_sets_its_topic(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, "general", &[]).await;
    server.join(&bob, &room).await;
    let mut bob_ws = WsClient::connect(server.addr, &bob.token).await;
    bob_ws.subscribe("n", NOTICES, json!({ "r": room })).await;
    let room_id = parley_domain::RoomId::parse(&room).expect("room id");
    server
        .wait_for_subscriber(&parley::relay::Channel::Room(room_id))
        .await;

    let topic = server
        .ok(
            Some(&alice.token),
            UPDATE,
            json!({ "r": room, "t": "all things" }),
        )
        .await;
    assert_eq!(
        topic["updateRoom"],
        json!({ "name": "general", "topic": "all things" })
    );
    let notice = bob_ws.next("n").await;
    assert_eq!(notice["notices"]["kind"], "ROOM_UPDATED");
    assert_eq!(
        notice["notices"]["text"],
        "alice updated the room's name or topic"
    );
    let topic_set_at = notice["notices"]["position"].as_i64().expect("position");
    let renamed = server
        .ok(
            Some(&alice.token),
            UPDATE,
            json!({ "r": room, "n": "lounge", "t": "" }),
        )
        .await;
    assert_eq!(
        renamed["updateRoom"],
        json!({ "name": "lounge", "topic": null })
    );

    // Time travel shows the room as it was.
    let at = "query($r: ID!, $p: Int) { room(id: $r, atPosition: $p) { name topic } }";
    let then = server
        .ok(
            Some(&bob.token),
            at,
            json!({ "r": room, "p": topic_set_at }),
        )
        .await;
    assert_eq!(
        then["room"],
        json!({ "name": "general", "topic": "all things" })
    );

    let events_before = server.event_count().await;
    for (who, variables, code) in [
        (&bob, json!({ "r": room, "n": "mine" }), "FORBIDDEN"),
        (
            &alice,
            json!({ "r": room, "t": "t".repeat(501) }),
            "BAD_USER_INPUT",
        ),
        (&alice, json!({ "r": room, "n": " " }), "BAD_USER_INPUT"),
    ] {
        server
            .fails(Some(&who.token), UPDATE, variables, code)
            .await;
    }
    let unchanged = server
        .ok(
            Some(&alice.token),
            UPDATE,
            json!({ "r": room, "n": "lounge" }),
        )
        .await;
    assert_eq!(unchanged["updateRoom"]["name"], "lounge");
    assert_eq!(
        server.event_count().await,
        events_before,
        "nothing new is no event"
    );
    server.stop().await;
}
