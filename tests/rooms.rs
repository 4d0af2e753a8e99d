//! Running rooms, end to end on both stores: finding a user by name and inviting them after
//! the room was created.

#[macro_use]
mod support;

use serde_json::json;
use support::api::{Store, TestServer, WsClient};

on_both_stores!(a_member_finds_a_user_by_name_and_invites_them);

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
