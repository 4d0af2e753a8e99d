//! Two Parley instances sharing one PostgreSQL and one Redis, as in docker-compose.yml: users
//! on different instances chat as if on one server. Real Redis, real Postgres, real HTTP and
//! WebSocket; each test under its own Redis prefix.

mod support;

use std::time::Duration;

use parley::relay::Channel;
use parley::store::{EventLog, PostgresLog};
use parley::ws::WsConfig;
use parley_domain::RoomId;
use serde_json::{json, Value};
use support::api::{a_and_b_behind_a_proxy, redis_options, Proxied, Session, TestServer, WsClient};
use support::redis::{
    kill_clients_named, redis_subscribers, redis_url, unique_prefix, upstream_of, url_via,
    FaultyProxy,
};
use support::{eventually, TestDb};

const MESSAGES: &str =
    "subscription($r: ID!, $a: Int) { messages(roomId: $r, after: $a) { seq body deleted } }";
const NOTICES: &str =
    "subscription($r: ID) { notices(roomId: $r) { kind text user { username } } }";
const TYPING: &str = "subscription($r: ID!) { typing(roomId: $r) { isTyping user { username } } }";
const PRESENCE_TTL: Duration = Duration::from_secs(2);

/// Two instances, A and B, over one database and one Redis prefix.
async fn two_instances() -> (TestServer, TestServer) {
    parley::telemetry::init();
    let db = TestDb::new().await;
    let log = EventLog::postgres(PostgresLog::new(db.pool.clone()));
    let prefix = unique_prefix();
    let url = redis_url();
    let projecting = db.pool.clone();
    let a = TestServer::on_log(
        log.clone(),
        Some(db),
        redis_options(&url, &prefix, PRESENCE_TTL).await,
        WsConfig::default(),
    )
    .await;
    // A projects: B starts once A's projector has the lock.
    eventually("A's projector is active", || {
        support::projector_active(&projecting)
    })
    .await;
    let b = TestServer::on_log(
        log,
        None,
        redis_options(&url, &prefix, PRESENCE_TTL).await,
        WsConfig::default(),
    )
    .await;
    (a, b)
}

/// Waits until `server` answers `/readyz` with 200 again (its relay is back).
async fn ready_again(server: &TestServer) {
    let http = reqwest::Client::new();
    eventually("the instance is ready again", || async {
        http.get(server.url("/readyz"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_on_one_instance_reaches_subscribers_on_the_other_in_order_exactly_once() {
    let (a, b) = two_instances().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = b.register("carol").await;
    let room = a.create_room(&alice, "general", &[&bob]).await;
    b.join(&bob, &room).await;

    let mut bob_on_b = WsClient::connect(b.addr, &bob.token).await;
    bob_on_b
        .subscribe("m", MESSAGES, json!({ "r": room, "a": null }))
        .await;
    bob_on_b.subscribe("t", TYPING, json!({ "r": room })).await;
    bob_on_b.subscribe("n", NOTICES, json!({ "r": room })).await;
    b.wait_for_feeds(&room, 3).await;

    for i in 1..=50 {
        a.send(&alice, &room, &format!("from A {i}"), &format!("a{i}"))
            .await;
    }
    for i in 1..=50 {
        let message = bob_on_b.next("m").await;
        assert_eq!(message["messages"]["seq"], i);
        assert_eq!(message["messages"]["body"], format!("from A {i}"));
    }
    bob_on_b.quiet("m", Duration::from_millis(300)).await;

    a.ok(
        Some(&alice.token),
        "mutation($r: ID!) { typing(roomId: $r) }",
        json!({ "r": room }),
    )
    .await;
    let typing = bob_on_b.next("t").await;
    assert_eq!(
        typing["typing"],
        json!({ "isTyping": true, "user": { "username": "alice" } })
    );

    a.join(&carol, &room).await;
    let notice = bob_on_b.next("n").await;
    assert_eq!(notice["notices"]["kind"], "MEMBER_JOINED");
    assert_eq!(notice["notices"]["user"]["username"], "carol");

    // Announcements reach every instance.
    let admin_id = parley_domain::UserId::parse(&alice.id).unwrap();
    a.app
        .commands
        .grant_role(
            admin_id,
            parley_domain::Role::Admin,
            &parley::commands::CommandMeta::system("test"),
        )
        .await
        .unwrap();
    let mut carol_on_a = WsClient::connect(a.addr, &carol.token).await;
    carol_on_a
        .subscribe("mine", NOTICES, json!({ "r": null }))
        .await;
    bob_on_b
        .subscribe("mine", NOTICES, json!({ "r": null }))
        .await;
    let broadcast = a.app.relay.channel_name(&Channel::Broadcast);
    eventually("both instances listen for announcements", || async {
        redis_subscribers(&broadcast).await == 2
    })
    .await;
    b.ok(
        Some(&alice.token),
        "mutation { announce(text: \"all.service-check\") }",
        json!({}),
    )
    .await;
    for client in [&mut carol_on_a, &mut bob_on_b] {
        let notice = client.next("mine").await;
        assert_eq!(notice["notices"]["kind"], "ANNOUNCEMENT");
        assert_eq!(notice["notices"]["text"], "all.service-check");
    }
    b.fails(
        Some(&bob.token),
        "mutation { announce(text: \"hi\") }",
        json!({}),
        "FORBIDDEN",
    )
    .await;
    b.fails(
        Some(&alice.token),
        "mutation { announce(text: \"  \") }",
        json!({}),
        "BAD_USER_INPUT",
    )
    .await;
    a.stop().await;
    b.stop().await;
}

/// Collects seqs of subscription `id` until it has `count` distinct ones.
async fn collect(mut client: WsClient, id: &'static str, count: usize) -> Vec<i64> {
    let mut seqs = Vec::with_capacity(count);
    while seqs.len() < count {
        let message = client.next(id).await;
        seqs.push(message["messages"]["seq"].as_i64().expect("seq"));
    }
    client.quiet(id, Duration::from_millis(500)).await;
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_relay_connections_mid_stream_loses_and_repeats_nothing() {
    let (a, b) = two_instances().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "general", &[]).await;
    b.join(&bob, &room).await;

    let mut subscribers = Vec::new();
    for (server, user) in [(&a, &alice), (&a, &bob), (&b, &alice), (&b, &bob)] {
        let mut client = WsClient::connect(server.addr, &user.token).await;
        client
            .subscribe("m", MESSAGES, json!({ "r": room, "a": null }))
            .await;
        subscribers.push(client);
    }
    a.wait_for_feeds(&room, 2).await;
    b.wait_for_feeds(&room, 2).await;
    let collectors: Vec<_> = subscribers
        .into_iter()
        .map(|client| tokio::spawn(collect(client, "m", 1000)))
        .collect();

    // Four senders, two per instance, 250 messages each.
    let senders: Vec<_> = [(&a, &alice), (&a, &bob), (&b, &alice), (&b, &bob)]
        .into_iter()
        .enumerate()
        .map(|(n, (server, user))| {
            let url = server.url("/graphql");
            let token = user.token.clone();
            let room = room.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let query = "mutation($r: ID!, $c: String!) { sendMessage(roomId: $r, body: \"x\", clientMsgId: $c) { seq } }";
                for i in 0..250 {
                    let body = json!({ "query": query, "variables": { "r": room, "c": format!("s{n}-{i}") } });
                    let response: Value = http.post(&url).bearer_auth(&token).json(&body).send().await.unwrap().json().await.unwrap();
                    assert!(response.get("errors").is_none(), "{response}");
                }
            })
        })
        .collect();

    // Meanwhile, kill every relay connection of both instances, three times.
    let names: Vec<String> = [&a, &b]
        .iter()
        .map(|s| s.app.relay.client_name().expect("redis relay").to_owned())
        .collect();
    // Each time once more messages have gone through since the last kill.
    let received = || a.app.relay.stats().received + b.app.relay.stats().received;
    for _ in 0..3 {
        let before = received();
        eventually("messages go through between kills", || async {
            received() >= before + 100
        })
        .await;
        for name in &names {
            kill_clients_named(name).await;
        }
    }
    for sender in senders {
        sender.await.unwrap();
    }
    for collector in collectors {
        let seqs = collector.await.unwrap();
        assert_eq!(
            seqs,
            (1..=1000).collect::<Vec<_>>(),
            "every subscriber gets 1..1000 exactly once"
        );
    }
    let resyncs: u64 = [&a, &b].iter().map(|s| s.app.relay.stats().resyncs).sum();
    assert!(resyncs > 0, "the kills were noticed (resyncs: {resyncs})");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_listens_to_a_room_only_while_it_has_subscribers_there() {
    let (a, b) = two_instances().await;
    let alice = a.register("alice").await;
    let room = a.create_room(&alice, "general", &[]).await;
    let channel = b.app.relay.channel_name(&parley::relay::Channel::Room(
        parley_domain::RoomId::parse(&room).unwrap(),
    ));
    assert!(!b.app.relay.active_channels().contains(&channel));

    let mut client = WsClient::connect(b.addr, &alice.token).await;
    client
        .subscribe("m1", MESSAGES, json!({ "r": room, "a": null }))
        .await;
    client
        .subscribe("m2", MESSAGES, json!({ "r": room, "a": null }))
        .await;
    eventually("B subscribes the room channel", || async {
        b.app.relay.active_channels().contains(&channel)
    })
    .await;
    assert!(
        !a.app.relay.active_channels().contains(&channel),
        "A has no subscriber there"
    );

    b.wait_for_feeds(&room, 2).await;
    client.unsubscribe("m1").await;
    let room_id = RoomId::parse(&room).expect("room id");
    eventually("m1 has ended", || async {
        b.app.relay.local_subscribers(&Channel::Room(room_id)) == 1
    })
    .await;
    assert!(
        b.app.relay.active_channels().contains(&channel),
        "one subscriber is left"
    );
    client.unsubscribe("m2").await;
    eventually("B unsubscribes the room channel", || async {
        !b.app.relay.active_channels().contains(&channel)
    })
    .await;
    a.stop().await;
    b.stop().await;
}

async fn online(server: &TestServer, who: &Session, room: &str) -> Vec<String> {
    let data = server
        .ok(
            Some(&who.token),
            "query($r: ID!) { room(id: $r) { online { username } } }",
            json!({ "r": room }),
        )
        .await;
    data["room"]["online"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_follows_connections_on_any_instance() {
    let (a, b) = two_instances().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let room = a.create_room(&alice, "general", &[]).await;
    a.join(&bob, &room).await;

    let mut alice_ws = WsClient::connect(a.addr, &alice.token).await;
    alice_ws.subscribe("n", NOTICES, json!({ "r": room })).await;
    a.wait_for_feeds(&room, 1).await;
    eventually("alice is online", || async {
        online(&a, &alice, &room).await == vec!["alice".to_owned()]
    })
    .await;

    // Bob on two devices, one per instance.
    let bob_on_a = WsClient::connect(a.addr, &bob.token).await;
    let notice = alice_ws.next("n").await;
    assert_eq!(
        notice["notices"],
        json!({ "kind": "MEMBER_ONLINE", "text": "bob is online", "user": { "username": "bob" } })
    );
    let bob_on_b = WsClient::connect(b.addr, &bob.token).await;
    let mut both: Vec<String> = online(&b, &alice, &room).await;
    both.sort();
    assert_eq!(both, vec!["alice", "bob"]);

    // The first device dies without a close frame: still online through the other.
    drop(bob_on_a);
    tokio::time::sleep(PRESENCE_TTL + Duration::from_millis(500)).await;
    assert!(online(&a, &alice, &room).await.contains(&"bob".to_owned()));

    // The last one dies: offline within the TTL, and the room is told.
    drop(bob_on_b);
    let notice = alice_ws.next("n").await;
    assert_eq!(notice["notices"]["kind"], "MEMBER_OFFLINE");
    eventually("bob is offline", || async {
        online(&a, &alice, &room).await == vec!["alice".to_owned()]
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_an_instance_is_not_ready_but_keeps_serving() {
    let db = TestDb::new().await;
    let log = EventLog::postgres(PostgresLog::new(db.pool.clone()));
    let url = redis_url();
    let proxy = FaultyProxy::start(upstream_of(&url)).await;
    let via_proxy = url_via(&url, proxy.addr);
    let server = TestServer::on_log(
        log,
        Some(db),
        redis_options(&via_proxy, &unique_prefix(), PRESENCE_TTL).await,
        WsConfig::default(),
    )
    .await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, "general", &[]).await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    proxy.cut();
    let ready = http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(
        (body["store_ok"].clone(), body["relay_ok"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(
        http.get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Writes and reads go on; only live delivery is degraded.
    server
        .send(&alice, &room, "while redis is down", "down-1")
        .await;
    let page = server
        .ok(
            Some(&alice.token),
            "query($r: ID!) { messages(roomId: $r) { messages { body } } }",
            json!({ "r": room }),
        )
        .await;
    assert_eq!(
        page["messages"]["messages"][0]["body"],
        "while redis is down"
    );

    proxy.restore();
    ready_again(&server).await;
    // A subscriber started after the outage sees everything, the outage's messages too.
    let mut ws = WsClient::connect(server.addr, &alice.token).await;
    ws.subscribe("m", MESSAGES, json!({ "r": room, "a": 0 }))
        .await;
    assert_eq!(
        ws.next("m").await["messages"]["body"],
        "while redis is down"
    );
    server.stop().await;
}

/// Bob, registered on B, member of a new room of Alice's (on A), subscribed to its messages
/// on B, and shown live that the first message arrives there.
async fn bob_listening_on_b(
    a: &TestServer,
    alice: &Session,
    b: &TestServer,
) -> (String, Session, WsClient) {
    let bob = b.register("bob").await;
    let room = a.create_room(alice, "general", &[&bob]).await;
    b.join(&bob, &room).await;
    let mut bob_on_b = WsClient::connect(b.addr, &bob.token).await;
    bob_on_b
        .subscribe("m", MESSAGES, json!({ "r": room, "a": null }))
        .await;
    b.wait_for_feeds(&room, 1).await;
    a.send(alice, &room, "first", "m1").await;
    assert_eq!(bob_on_b.next("m").await["messages"]["body"], "first");
    (room, bob, bob_on_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_who_leaves_while_the_relay_is_down_gets_what_came_before_the_leave_and_nothing_after(
) {
    let (a, b, proxy) = a_and_b_behind_a_proxy(Proxied::B, None).await;
    let alice = a.register("alice").await;
    let (room, bob, mut bob_on_b) = bob_listening_on_b(&a, &alice, &b).await;
    // Bob also follows the room's notices and who types, on the same socket.
    bob_on_b.subscribe("n", NOTICES, json!({ "r": room })).await;
    bob_on_b.subscribe("t", TYPING, json!({ "r": room })).await;
    let channel = Channel::Room(RoomId::parse(&room).expect("room id"));
    eventually("B has Bob's three subscriptions to the room", || async {
        b.app.relay.local_subscribers(&channel) == 3
    })
    .await;

    // B loses Redis; meanwhile the room goes on, Bob leaves through A, and it goes on.
    proxy.cut();
    a.send(&alice, &room, "before 2", "m2").await;
    a.send(&alice, &room, "before 3", "m3").await;
    a.ok(
        Some(&bob.token),
        "mutation($r: ID!) { leaveRoom(roomId: $r) { id } }",
        json!({ "r": room }),
    )
    .await;
    a.send(&alice, &room, "after 4", "m4").await;
    proxy.restore();
    ready_again(&b).await;
    for i in 5..=6 {
        a.send(&alice, &room, &format!("after {i}"), &format!("m{i}"))
            .await;
    }
    // The re-read after the outage stops exactly at the leave.
    for body in ["before 2", "before 3"] {
        let next = bob_on_b.message("m").await;
        assert_eq!(
            next["payload"]["data"]["messages"]["body"], body,
            "what came before the leave, in order: {next}"
        );
    }
    let ended = bob_on_b.message("m").await;
    assert_eq!(
        ended["type"], "complete",
        "the ex-member's subscription ends instead of delivering {ended}"
    );
    // The notices: his own leave, re-read in order, then the end; typing ends with it.
    let left = loop {
        let notice = bob_on_b.message("n").await;
        let kind = &notice["payload"]["data"]["notices"]["kind"];
        if kind != "MEMBER_ONLINE" && kind != "MEMBER_OFFLINE" {
            break notice;
        }
    };
    assert_eq!(
        left["payload"]["data"]["notices"]["kind"], "MEMBER_LEFT",
        "{left}"
    );
    assert_eq!(
        left["payload"]["data"]["notices"]["user"]["username"], "bob",
        "{left}"
    );
    for id in ["n", "t"] {
        let ended = bob_on_b.message(id).await;
        assert_eq!(
            ended["type"], "complete",
            "the ex-member's {id} subscription ends instead of delivering {ended}"
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_deleted_during_an_outage_is_re_read_as_deleted() {
    let (a, b, proxy) = a_and_b_behind_a_proxy(Proxied::B, None).await;
    let alice = a.register("alice").await;
    let (room, _bob, mut bob_on_b) = bob_listening_on_b(&a, &alice, &b).await;

    // While B has no relay, Alice sends a message and deletes it; then one more.
    proxy.cut();
    a.send(&alice, &room, "a secret", "m2").await;
    a.ok(
        Some(&alice.token),
        "mutation($r: ID!) { deleteMessage(roomId: $r, seq: 2) { seq } }",
        json!({ "r": room }),
    )
    .await;
    proxy.restore();
    ready_again(&b).await;
    a.send(&alice, &room, "after", "m3").await;
    let deleted = bob_on_b.next("m").await;
    assert_eq!(deleted["messages"]["seq"], 2, "{deleted}");
    assert_eq!(
        (
            &deleted["messages"]["body"],
            &deleted["messages"]["deleted"]
        ),
        (&json!(""), &json!(true)),
        "the re-read shows the message as deleted, never its text: {deleted}"
    );
    let next = bob_on_b.next("m").await;
    assert_eq!(next["messages"]["body"], "after", "{next}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_message_arrives_even_if_the_projecting_instance_could_not_relay_it_at_first() {
    // A projects and reaches Redis through a proxy; B, where the subscriber is, reaches
    // Redis directly.
    let (a, b, proxy) = a_and_b_behind_a_proxy(Proxied::A, None).await;
    let alice = a.register("alice").await;
    let (room, _bob, mut bob_on_b) = bob_listening_on_b(&a, &alice, &b).await;

    // The projecting instance cannot publish the conversation's last message for longer
    // than its relay timeout (2 s), so the publish fails; nothing comes after it that
    // would reveal the gap.
    proxy.cut();
    a.send(&alice, &room, "last", "m2").await;
    eventually("A's publish of it has failed", || async {
        a.app.relay.stats().publish_errors > 0
    })
    .await;
    proxy.restore();
    let last = bob_on_b.next("m").await;
    assert_eq!(last["messages"]["body"], "last");
    assert_eq!(last["messages"]["seq"], 2);
    a.stop().await;
    b.stop().await;
}
