//! Running rooms, end to end on both stores: finding a user by name, inviting them after the
//! room was created, renaming a room and setting its topic, keeping the rooms list live with
//! one `roomUpdates` subscription.

#[macro_use]
mod support;

use serde_json::json;
use support::api::{a_and_b_behind_a_proxy, Proxied, Store, TestServer, WsClient};

on_both_stores!(
    a_member_finds_a_user_by_name_and_invites_them,
    the_host_renames_the_room_and_sets_its_topic,
    one_subscription_keeps_the_rooms_list_live,
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
    server.wait_for_feeds(&room, 1).await;

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

const ROOM_UPDATES: &str = "subscription { roomUpdates { id name unreadCount lastMessage { body } members { username } } }";

/// The next `roomUpdates` item.
async fn next_update(ws: &mut WsClient) -> serde_json::Value {
    ws.next("rooms").await["roomUpdates"].clone()
}

fn member_names(room: &serde_json::Value) -> Vec<&str> {
    let mut names: Vec<&str> = room["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["username"].as_str().expect("username"))
        .collect();
    names.sort_unstable();
    names
}

async fn one_subscription_keeps_the_rooms_list_live(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let alice_id = parley_domain::UserId::parse(&alice.id).expect("id");
    let mut ws = WsClient::connect(server.addr, &alice.token).await;
    ws.subscribe("rooms", ROOM_UPDATES, json!({})).await;
    server
        .wait_for_subscriber(&parley::relay::Channel::User(alice_id))
        .await;

    // A room she creates joins the list; so do its changes.
    let room = server.create_room(&alice, "general", &[]).await;
    let created = next_update(&mut ws).await;
    assert_eq!(created["id"], room.as_str());
    assert_eq!(member_names(&created), ["alice"]);
    server.join(&bob, &room).await;
    assert_eq!(member_names(&next_update(&mut ws).await), ["alice", "bob"]);
    server.send(&bob, &room, "hi alice", "b1").await;
    let sent = next_update(&mut ws).await;
    assert_eq!(sent["lastMessage"]["body"], "hi alice");
    assert_eq!(sent["unreadCount"], 1);
    server
        .ok(
            Some(&alice.token),
            "mutation($r: ID!) { markRead(roomId: $r, seq: 1) { id } }",
            json!({ "r": room }),
        )
        .await;
    assert_eq!(next_update(&mut ws).await["unreadCount"], 0);
    server
        .ok(
            Some(&alice.token),
            UPDATE,
            json!({ "r": room, "n": "renamed" }),
        )
        .await;
    assert_eq!(next_update(&mut ws).await["name"], "renamed");

    // A direct room bob opens with her is hers too.
    let direct = server
        .ok(
            Some(&bob.token),
            "mutation($u: ID!) { openDirectRoom(userId: $u) { id } }",
            json!({ "u": alice.id }),
        )
        .await;
    let direct = direct["openDirectRoom"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(next_update(&mut ws).await["id"], direct.as_str());

    // Leaving: the room comes once more without her, then never again.
    server
        .ok(
            Some(&alice.token),
            "mutation($r: ID!) { leaveRoom(roomId: $r) { id } }",
            json!({ "r": room }),
        )
        .await;
    let left = next_update(&mut ws).await;
    assert_eq!(left["id"], room.as_str());
    assert_eq!(member_names(&left), ["bob"]);
    server.send(&bob, &room, "still here?", "b2").await;
    server.send(&bob, &direct, "in private", "d1").await;
    let direct_update = next_update(&mut ws).await;
    assert_eq!(
        direct_update["id"],
        direct.as_str(),
        "the room she left sends nothing more"
    );
    assert_eq!(direct_update["lastMessage"]["body"], "in private");
    ws.quiet("rooms", std::time::Duration::from_millis(300))
        .await;
    server.stop().await;
}

/// The rooms list subscribed on instance B follows what happens through instance A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rooms_list_follows_changes_made_on_another_instance() {
    let (a, b, _proxy) = a_and_b_behind_a_proxy(Proxied::B, None).await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let room = a.create_room(&bob, "general", &[]).await;
    let mut ws = WsClient::connect(b.addr, &alice.token).await;
    ws.subscribe("rooms", ROOM_UPDATES, json!({})).await;
    let alice_id = parley_domain::UserId::parse(&alice.id).expect("id");
    b.wait_for_subscriber(&parley::relay::Channel::User(alice_id))
        .await;
    a.join(&alice, &room).await;
    assert_eq!(member_names(&next_update(&mut ws).await), ["alice", "bob"]);
    a.send(&bob, &room, "from A", "b1").await;
    let sent = next_update(&mut ws).await;
    assert_eq!(sent["lastMessage"]["body"], "from A");
    assert_eq!(sent["unreadCount"], 1);
    a.stop().await;
    b.stop().await;
}
