//! Rooms people can run, end to end: private rooms outsiders cannot see, direct rooms (one
//! per pair of users, also when both open it at once on two instances), roles, kicks and
//! bans that end the removed member's subscriptions.

#[macro_use]
mod support;

use parley::relay::Channel;
use parley_domain::{RoomId, UserId};
use serde_json::{json, Value};
use support::api::{a_and_b_behind_a_proxy, Proxied, Session, Store, TestServer, WsClient};

on_both_stores!(
    a_private_room_is_invisible_to_outsiders_and_joined_by_invitation,
    a_direct_room_is_the_one_room_of_two_users,
    the_host_and_moderators_run_the_room,
    a_blocked_users_messages_are_not_pushed_to_the_blocker,
);

const CREATE: &str = "mutation($n: String!, $v: RoomVisibility) { createRoom(name: $n, visibility: $v) { id visibility } }";
const ROOM: &str = "query($r: ID!) { room(id: $r) { id name visibility members { username } } }";
const JOIN: &str = "mutation($r: ID!) { joinRoom(roomId: $r) { id } }";
const INVITE: &str = "mutation($r: ID!, $u: ID!) { invite(roomId: $r, userId: $u) { id } }";
const DIRECT: &str =
    "mutation($u: ID!) { openDirectRoom(userId: $u) { id name visibility members { username } } }";
const LEAVE: &str = "mutation($r: ID!) { leaveRoom(roomId: $r) { id } }";
const SET_ROLE: &str = "mutation($r: ID!, $u: ID!, $role: RoomRole!) { setMemberRole(roomId: $r, userId: $u, role: $role) { id host { username } } }";
const KICK: &str =
    "mutation($r: ID!, $u: ID!) { kick(roomId: $r, userId: $u) { members { username } } }";
const BAN: &str = "mutation($r: ID!, $u: ID!, $why: String) { ban(roomId: $r, userId: $u, reason: $why) { members { username } banned { username } } }";
const UNBAN: &str =
    "mutation($r: ID!, $u: ID!) { unban(roomId: $r, userId: $u) { banned { username } } }";
const ROLE: &str = "query($r: ID!, $u: ID!) { room(id: $r) { role(userId: $u) } }";
const BANNED: &str = "query($r: ID!) { room(id: $r) { banned { username } } }";
const MESSAGES: &str = "subscription($r: ID!) { messages(roomId: $r) { seq body } }";
const MESSAGES_AFTER: &str =
    "subscription($r: ID!, $a: Int) { messages(roomId: $r, after: $a) { seq body } }";
const ROOM_NOTICES: &str = "subscription($r: ID) { notices(roomId: $r) { kind text } }";
const MY_NOTICES: &str = "subscription { notices { kind roomId } }";
const DELETE: &str =
    "mutation($r: ID!, $s: Int!) { deleteMessage(roomId: $r, seq: $s) { deleted } }";

fn vars(room: &str, user: &Session) -> Value {
    json!({ "r": room, "u": user.id })
}

fn usernames(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|u| u["username"].as_str().expect("username"))
        .collect()
}

async fn a_private_room_is_invisible_to_outsiders_and_joined_by_invitation(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let created = server
        .ok(
            Some(&alice.token),
            CREATE,
            json!({ "n": "secret", "v": "PRIVATE" }),
        )
        .await;
    assert_eq!(created["createRoom"]["visibility"], "PRIVATE");
    let room = created["createRoom"]["id"].as_str().expect("id").to_owned();

    // An outsider gets the answer of a room that does not exist.
    let missing = RoomId::new().to_string();
    for id in [&room, &missing] {
        let seen = server
            .ok(Some(&carol.token), ROOM, json!({ "r": id }))
            .await;
        assert!(seen["room"].is_null(), "{seen}");
    }
    let events_before = server.event_count().await;
    server
        .fails(Some(&carol.token), JOIN, json!({ "r": room }), "FORBIDDEN")
        .await;
    assert_eq!(server.event_count().await, events_before);

    // Invited, bob sees it and joins; as a plain member he may not invite.
    server
        .ok(Some(&alice.token), INVITE, vars(&room, &bob))
        .await;
    let seen = server
        .ok(Some(&bob.token), ROOM, json!({ "r": room }))
        .await;
    assert_eq!(seen["room"]["name"], "secret");
    server.join(&bob, &room).await;
    server
        .fails(Some(&bob.token), INVITE, vars(&room, &carol), "FORBIDDEN")
        .await;
    // A moderator may.
    server
        .ok(
            Some(&alice.token),
            SET_ROLE,
            json!({ "r": room, "u": bob.id, "role": "MODERATOR" }),
        )
        .await;
    server
        .ok(Some(&bob.token), INVITE, vars(&room, &carol))
        .await;
    server.join(&carol, &room).await;
    let seen = server
        .ok(Some(&carol.token), ROOM, json!({ "r": room }))
        .await;
    assert_eq!(
        usernames(&seen["room"]["members"]),
        sorted_by_id(&[&alice, &bob, &carol])
    );

    // A public room is joined by id, as before.
    let public = server
        .ok(Some(&alice.token), CREATE, json!({ "n": "open" }))
        .await;
    assert_eq!(public["createRoom"]["visibility"], "PUBLIC");
    let public = public["createRoom"]["id"].as_str().expect("id").to_owned();
    server.join(&carol, &public).await;
    server.stop().await;
}

/// Usernames in user-id order (the order of `members`).
fn sorted_by_id<'a>(users: &[&'a Session]) -> Vec<&'a str> {
    let mut users = users.to_vec();
    users.sort_by_key(|u| UserId::parse(&u.id).expect("id"));
    users.iter().map(|u| u.username.as_str()).collect()
}

async fn a_direct_room_is_the_one_room_of_two_users(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;

    let opened = server
        .ok(Some(&alice.token), DIRECT, json!({ "u": bob.id }))
        .await["openDirectRoom"]
        .clone();
    assert_eq!(opened["visibility"], "DIRECT");
    assert_eq!(opened["name"], "Direct");
    assert_eq!(usernames(&opened["members"]), sorted_by_id(&[&alice, &bob]));
    let room = opened["id"].as_str().expect("id").to_owned();
    let again = server
        .ok(Some(&bob.token), DIRECT, json!({ "u": alice.id }))
        .await;
    assert_eq!(
        again["openDirectRoom"]["id"],
        room.as_str(),
        "the same room"
    );
    let other = server
        .ok(Some(&alice.token), DIRECT, json!({ "u": carol.id }))
        .await;
    assert_ne!(other["openDirectRoom"]["id"], room.as_str());

    // Nobody else sees it, joins it or is invited to it.
    let seen = server
        .ok(Some(&carol.token), ROOM, json!({ "r": room }))
        .await;
    assert!(seen["room"].is_null());
    server
        .fails(Some(&carol.token), JOIN, json!({ "r": room }), "FORBIDDEN")
        .await;
    server
        .fails(Some(&alice.token), INVITE, vars(&room, &carol), "FORBIDDEN")
        .await;
    for (peer, code) in [
        (alice.id.clone(), "BAD_USER_INPUT"),
        (UserId::new().to_string(), "BAD_USER_INPUT"),
    ] {
        server
            .fails(Some(&alice.token), DIRECT, json!({ "u": peer }), code)
            .await;
    }

    // Bob leaves; opening it again brings him back, into the same history.
    server.send(&alice, &room, "hi bob", "d1").await;
    server
        .ok(Some(&bob.token), LEAVE, json!({ "r": room }))
        .await;
    let back = server
        .ok(Some(&bob.token), DIRECT, json!({ "u": alice.id }))
        .await;
    assert_eq!(back["openDirectRoom"]["id"], room.as_str());
    assert_eq!(
        usernames(&back["openDirectRoom"]["members"]),
        sorted_by_id(&[&alice, &bob])
    );
    let history = server
        .ok(
            Some(&bob.token),
            "query($r: ID!) { messages(roomId: $r) { messages { body } } }",
            json!({ "r": room }),
        )
        .await;
    assert_eq!(
        history["messages"]["messages"],
        json!([{ "body": "hi bob" }])
    );
    server.stop().await;
}

/// Both users open their direct room at the same moment, one on each instance: one room,
/// created once, both members, no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_users_opening_their_direct_room_at_once_on_two_instances_get_one_room() {
    let (a, b, _proxy) = a_and_b_behind_a_proxy(Proxied::B, None).await;
    for round in 0..5 {
        let alice = a.register(&format!("alice_{round}")).await;
        let bob = b.register(&format!("bob_{round}")).await;
        let (from_a, from_b) = tokio::join!(
            a.ok(Some(&alice.token), DIRECT, json!({ "u": bob.id })),
            b.ok(Some(&bob.token), DIRECT, json!({ "u": alice.id })),
        );
        let room = from_a["openDirectRoom"]["id"].as_str().expect("id");
        assert_eq!(from_b["openDirectRoom"]["id"], room, "round {round}");
        let room_id = RoomId::parse(room).expect("room id");
        let stored = a
            .app
            .log
            .room_events(room_id, 0, i64::MAX)
            .await
            .expect("room events");
        let types: Vec<&str> = stored.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["RoomCreated", "MemberJoined"], "round {round}");
    }
    a.stop().await;
    b.stop().await;
}

async fn the_host_and_moderators_run_the_room(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let room = server.create_room(&alice, "general", &[]).await;
    for user in [&bob, &carol, &dave] {
        server.join(user, &room).await;
    }
    let carol_id = UserId::parse(&carol.id).expect("id");

    // Roles: the host only; the room hears of it.
    let mut dave_ws = WsClient::connect(server.addr, &dave.token).await;
    dave_ws
        .subscribe("n", ROOM_NOTICES, json!({ "r": room }))
        .await;
    server.wait_for_feeds(&room, 1).await;
    server
        .fails(
            Some(&bob.token),
            SET_ROLE,
            json!({ "r": room, "u": carol.id, "role": "MODERATOR" }),
            "FORBIDDEN",
        )
        .await;
    server
        .ok(
            Some(&alice.token),
            SET_ROLE,
            json!({ "r": room, "u": bob.id, "role": "MODERATOR" }),
        )
        .await;
    let notice = next_notice(&mut dave_ws).await;
    assert_eq!(notice["notices"]["kind"], "ROLE_CHANGED");
    assert_eq!(notice["notices"]["text"], "alice made bob a moderator");
    let role = server.ok(Some(&dave.token), ROLE, vars(&room, &bob)).await;
    assert_eq!(role["room"]["role"], "MODERATOR");
    let role = server
        .ok(Some(&dave.token), ROLE, vars(&room, &alice))
        .await;
    assert_eq!(role["room"]["role"], "HOST");

    // A kick ends the member's subscriptions to the room and tells them.
    server.send(&carol, &room, "spam", "c1").await;
    let mut carol_ws = WsClient::connect(server.addr, &carol.token).await;
    // After her message: without `after` the subscription would replay it when it starts
    // before the read model holds it, and this part is about what comes next.
    carol_ws
        .subscribe("m", MESSAGES_AFTER, json!({ "r": room, "a": 1 }))
        .await;
    carol_ws.subscribe("mine", MY_NOTICES, json!({})).await;
    // Her own channel: her notices, and the messages subscription (for blocks).
    server
        .wait_for_subscribers(&Channel::User(carol_id), 2)
        .await;
    // Dave's notices and her messages.
    server.wait_for_feeds(&room, 2).await;
    server
        .fails(Some(&bob.token), KICK, vars(&room, &alice), "FORBIDDEN")
        .await;
    server
        .fails(Some(&dave.token), KICK, vars(&room, &carol), "FORBIDDEN")
        .await;
    let kicked = server.ok(Some(&bob.token), KICK, vars(&room, &carol)).await;
    assert!(!usernames(&kicked["kick"]["members"]).contains(&"carol"));
    let mine = carol_ws.next("mine").await;
    assert_eq!(mine["notices"]["kind"], "MEMBER_KICKED");
    assert_eq!(mine["notices"]["roomId"], room.as_str());
    let ended = carol_ws.message("m").await;
    assert_eq!(ended["type"], "complete", "{ended}");
    assert_eq!(
        next_notice(&mut dave_ws).await["notices"]["text"],
        "bob removed carol"
    );

    // She may come back; a ban puts her out for good, with its reason.
    server.join(&carol, &room).await;
    assert_eq!(
        next_notice(&mut dave_ws).await["notices"]["kind"],
        "MEMBER_JOINED"
    );
    carol_ws
        .subscribe("m2", MESSAGES, json!({ "r": room }))
        .await;
    // Started: the ban ends it (before it had found her a member, it would refuse her).
    server.wait_for_feeds(&room, 2).await;
    let banned = server
        .ok(
            Some(&bob.token),
            BAN,
            json!({ "r": room, "u": carol.id, "why": "spam" }),
        )
        .await;
    assert_eq!(usernames(&banned["ban"]["banned"]), ["carol"]);
    let ended = carol_ws.message("m2").await;
    assert_eq!(ended["type"], "complete", "{ended}");
    assert_eq!(
        carol_ws.next("mine").await["notices"]["kind"],
        "MEMBER_BANNED"
    );
    assert_eq!(
        next_notice(&mut dave_ws).await["notices"]["text"],
        "bob banned carol: spam"
    );
    let events_before = server.event_count().await;
    server
        .fails(Some(&carol.token), JOIN, json!({ "r": room }), "FORBIDDEN")
        .await;
    server
        .fails(Some(&alice.token), INVITE, vars(&room, &carol), "FORBIDDEN")
        .await;
    server
        .fails(Some(&bob.token), BAN, vars(&room, &carol), "CONFLICT")
        .await;
    server
        .fails(Some(&dave.token), BANNED, json!({ "r": room }), "FORBIDDEN")
        .await;
    assert_eq!(
        server.event_count().await,
        events_before,
        "refusals store nothing"
    );
    let seen = server
        .ok(Some(&alice.token), BANNED, json!({ "r": room }))
        .await;
    assert_eq!(usernames(&seen["room"]["banned"]), ["carol"]);

    // A moderator deletes anyone's message.
    let deleted = server
        .ok(Some(&bob.token), DELETE, json!({ "r": room, "s": 1 }))
        .await;
    assert_eq!(deleted["deleteMessage"]["deleted"], true);

    // Unbanned, she joins again; handing the room over makes the old host a moderator.
    let unbanned = server
        .ok(Some(&bob.token), UNBAN, vars(&room, &carol))
        .await;
    assert_eq!(unbanned["unban"]["banned"], json!([]));
    server.join(&carol, &room).await;
    let handed = server
        .ok(
            Some(&alice.token),
            SET_ROLE,
            json!({ "r": room, "u": dave.id, "role": "HOST" }),
        )
        .await;
    assert_eq!(handed["setMemberRole"]["host"]["username"], "dave");
    let role = server
        .ok(Some(&carol.token), ROLE, vars(&room, &alice))
        .await;
    assert_eq!(role["room"]["role"], "MODERATOR");
    let role = server
        .ok(Some(&carol.token), ROLE, vars(&room, &carol))
        .await;
    assert_eq!(role["room"]["role"], "MEMBER");
    server.stop().await;
}

/// The next room notice that is not presence (members coming online or going offline).
async fn next_notice(ws: &mut WsClient) -> Value {
    loop {
        let notice = ws.next("n").await;
        let kind = notice["notices"]["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "MEMBER_ONLINE" | "MEMBER_OFFLINE") {
            return notice;
        }
    }
}

const BLOCK: &str = "mutation($u: ID!) { blockUser(userId: $u) }";
const UNBLOCK: &str = "mutation($u: ID!) { unblockUser(userId: $u) }";
const BLOCKED_USERS: &str = "query { blockedUsers { username } }";

async fn a_blocked_users_messages_are_not_pushed_to_the_blocker(store: Store) {
    let server = TestServer::start(store).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let zed = server.register("zed").await;
    let room = server.create_room(&alice, "general", &[]).await;
    server.join(&bob, &room).await;
    server.join(&zed, &room).await;

    let blocked = server
        .ok(Some(&bob.token), BLOCK, json!({ "u": zed.id }))
        .await;
    assert_eq!(blocked["blockUser"], true);
    let again = server
        .ok(Some(&bob.token), BLOCK, json!({ "u": zed.id }))
        .await;
    assert_eq!(again["blockUser"], true, "blocking twice changes nothing");
    let list = server.ok(Some(&bob.token), BLOCKED_USERS, json!({})).await;
    assert_eq!(usernames(&list["blockedUsers"]), ["zed"]);
    for (user, code) in [
        (bob.id.clone(), "BAD_USER_INPUT"),
        (UserId::new().to_string(), "BAD_USER_INPUT"),
    ] {
        server
            .fails(Some(&bob.token), BLOCK, json!({ "u": user }), code)
            .await;
    }

    // Bob's live messages skip zed's; alice's do not; bob's history keeps them.
    let mut bob_ws = WsClient::connect(server.addr, &bob.token).await;
    bob_ws.subscribe("m", MESSAGES, json!({ "r": room })).await;
    let mut alice_ws = WsClient::connect(server.addr, &alice.token).await;
    alice_ws
        .subscribe("m", MESSAGES, json!({ "r": room }))
        .await;
    server.wait_for_feeds(&room, 2).await;
    server.send(&zed, &room, "from zed", "z1").await;
    server.send(&alice, &room, "from alice", "a1").await;
    assert_eq!(alice_ws.next("m").await["messages"]["body"], "from zed");
    assert_eq!(alice_ws.next("m").await["messages"]["body"], "from alice");
    let first = bob_ws.next("m").await;
    assert_eq!(
        first["messages"]["body"], "from alice",
        "zed's was not pushed"
    );
    assert_eq!(first["messages"]["seq"], 2);
    let history = server
        .ok(
            Some(&bob.token),
            "query($r: ID!) { messages(roomId: $r) { messages { body } } }",
            json!({ "r": room }),
        )
        .await;
    assert_eq!(
        history["messages"]["messages"],
        json!([{ "body": "from zed" }, { "body": "from alice" }])
    );

    // Zed cannot open a direct room with bob; bob can with zed.
    server
        .fails(
            Some(&zed.token),
            DIRECT,
            json!({ "u": bob.id }),
            "FORBIDDEN",
        )
        .await;

    // Unblocked, zed's messages come live again, on the same subscription.
    let unblocked = server
        .ok(Some(&bob.token), UNBLOCK, json!({ "u": zed.id }))
        .await;
    assert_eq!(unblocked["unblockUser"], true);
    let list = server.ok(Some(&bob.token), BLOCKED_USERS, json!({})).await;
    assert_eq!(list["blockedUsers"], json!([]));
    // The subscription hears of the change on bob's own channel, concurrently with the
    // room's: until it has, zed's messages are still skipped. Each round sends one of zed's
    // and then a marker of alice's; bob gets zed's first once the unblock is in.
    for round in 0.. {
        assert!(
            round < 20,
            "zed's messages never came back after the unblock"
        );
        server
            .send(&zed, &room, "zed again", &format!("z{round}"))
            .await;
        server
            .send(&alice, &room, "marker", &format!("m{round}"))
            .await;
        let next = bob_ws.next("m").await;
        if next["messages"]["body"] == "zed again" {
            assert_eq!(bob_ws.next("m").await["messages"]["body"], "marker");
            break;
        }
        assert_eq!(next["messages"]["body"], "marker");
    }
    server
        .ok(Some(&zed.token), DIRECT, json!({ "u": bob.id }))
        .await;
    server.stop().await;
}
