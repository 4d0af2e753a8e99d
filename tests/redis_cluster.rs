//! The relay and presence over a real Redis Cluster: a private 3-master cluster started by
//! the test (see `support::redis_cluster`), two Parley instances sharing one PostgreSQL test
//! database and the cluster. Rooms are sharded channels (`SSUBSCRIBE`/`SPUBLISH`), each on the
//! master owning its slot; killing that master mid-stream and starting it again loses and
//! repeats no message for the subscribers on the other instance.
//!
//! Needs `redis-server` and `redis-cli` (Redis 7+) on PATH; fails saying so when missing.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use parley::app::AppOptions;
use parley::relay::{
    Channel, Presence, PresenceConfig, Relay, RelayConfig, RelayItem, RelayKind, Subscription,
};
use parley::store::{EventLog, PostgresLog};
use parley::ws::WsConfig;
use parley_domain::{RoomId, UserId};
use serde_json::{json, Value};
use support::api::{fast_projector, TestServer, WsClient};
use support::redis::unique_prefix;
use support::redis_cluster::RedisCluster;
use support::TestDb;
use support::{eventually, WAIT};
use tokio::time::timeout;

const MESSAGES: &str =
    "subscription($r: ID!, $a: Int) { messages(roomId: $r, after: $a) { seq body } }";

async fn relay(cluster: &RedisCluster, prefix: &str) -> Relay {
    let relay = Relay::redis(&cluster.url(), RelayConfig::with_prefix(prefix))
        .await
        .expect("relay over the cluster");
    assert_eq!(relay.kind(), RelayKind::RedisCluster);
    relay
}

async fn presence(cluster: &RedisCluster, prefix: &str, ttl: Duration) -> Presence {
    Presence::redis(
        &cluster.url(),
        PresenceConfig {
            prefix: prefix.to_owned(),
            ttl,
            ..PresenceConfig::default()
        },
    )
    .await
    .expect("presence over the cluster")
}

async fn next(sub: &mut Subscription) -> RelayItem {
    match timeout(WAIT, sub.recv()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("subscription to {} closed", sub.channel()),
        Err(_) => panic!("nothing arrived on {} within {WAIT:?}", sub.channel()),
    }
}

/// Rooms whose channels live on three different masters.
async fn rooms_on_every_shard(cluster: &RedisCluster, relay: &Relay) -> Vec<RoomId> {
    let mut by_owner: Vec<Option<RoomId>> = vec![None; cluster.ports.len()];
    while by_owner.iter().any(Option::is_none) {
        let room = RoomId::new();
        let owner = cluster
            .owner_of(&relay.channel_name(&Channel::Room(room)))
            .await;
        by_owner[owner].get_or_insert(room);
    }
    by_owner.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_room_is_a_sharded_channel_on_the_master_owning_its_slot() {
    let cluster = RedisCluster::start(3).await;
    let prefix = unique_prefix();
    let (a, b) = (
        relay(&cluster, &prefix).await,
        relay(&cluster, &prefix).await,
    );
    let rooms = rooms_on_every_shard(&cluster, &a).await;

    let mut subs = Vec::new();
    for room in &rooms {
        subs.push(b.subscribe(&Channel::Room(*room)).await.expect("subscribe"));
    }
    // Each channel is subscribed on its owner only, as a sharded channel; nothing classic.
    for (index, room) in rooms.iter().enumerate() {
        let name = b.channel_name(&Channel::Room(*room));
        assert_eq!(cluster.owner_of(&name).await, index);
        for node in 0..3 {
            let shard = cluster.shard_channels(node, &format!("{prefix}:*")).await;
            assert_eq!(
                shard.contains(&name),
                node == index,
                "{name} on node {node}"
            );
            assert!(cluster
                .classic_channels(node, &format!("{prefix}:*"))
                .await
                .is_empty());
        }
    }

    // One batch across the three shards arrives, in order per room.
    let mut batch = Vec::new();
    for i in 0..20 {
        for room in &rooms {
            batch.push((Channel::Room(*room), json!({ "i": i })));
        }
    }
    a.publish_all(&batch)
        .await
        .expect("publish_all over the cluster");
    a.publish(&Channel::Room(rooms[1]), &json!({ "i": 20 }))
        .await
        .expect("publish");
    for (index, sub) in subs.iter_mut().enumerate() {
        let last = if index == 1 { 20 } else { 19 };
        for i in 0..=last {
            assert_eq!(
                next(sub).await,
                RelayItem::Message(json!({ "i": i }).into())
            );
        }
    }
    assert_eq!(a.stats().publish_commands, 61);

    // The last local subscriber leaving unsubscribes the shard channel.
    let gone = b.channel_name(&Channel::Room(rooms[2]));
    drop(subs.pop());
    eventually("the shard channel is unsubscribed", || async {
        !cluster
            .shard_channels(2, &format!("{prefix}:*"))
            .await
            .contains(&gone)
    })
    .await;
    // And that was not taken for Redis dropping it: no resync for the others.
    assert_eq!(b.stats().resyncs, 0);
    assert!(b.ping().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_rooms_slot_moves_to_another_master_the_subscription_follows_it() {
    let cluster = RedisCluster::start(3).await;
    let prefix = unique_prefix();
    let (a, b) = (
        relay(&cluster, &prefix).await,
        relay(&cluster, &prefix).await,
    );
    let room = Channel::Room(RoomId::new());
    let name = b.channel_name(&room);
    let from = cluster.owner_of(&name).await;
    let to = (from + 1) % 3;
    let mut sub = b.subscribe(&room).await.expect("subscribe");
    a.publish(&room, &json!({ "n": 0 })).await.expect("publish");
    assert_eq!(
        next(&mut sub).await,
        RelayItem::Message(json!({ "n": 0 }).into())
    );

    // Resharding: Redis drops the old owner's subscribers with a `sunsubscribe` push.
    cluster.move_slot_of(&name, to).await;
    eventually("B subscribes the channel on its new master", || async {
        cluster.shard_channels(to, &name).await.contains(&name)
    })
    .await;
    assert!(!cluster.shard_channels(from, &name).await.contains(&name));
    // The subscriber is told to re-read, then gets what is published next, once.
    assert_eq!(next(&mut sub).await, RelayItem::Resync);
    a.publish(&room, &json!({ "n": 1 }))
        .await
        .expect("publish after MOVED");
    assert_eq!(
        next(&mut sub).await,
        RelayItem::Message(json!({ "n": 1 }).into())
    );
    a.publish(&room, &json!({ "n": 2 })).await.expect("publish");
    assert_eq!(
        next(&mut sub).await,
        RelayItem::Message(json!({ "n": 2 }).into())
    );
    if let Ok(item) = timeout(Duration::from_millis(300), sub.recv()).await {
        panic!("expected nothing more, got {item:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_keys_of_a_user_share_a_slot_and_queries_span_shards() {
    let cluster = RedisCluster::start(3).await;
    let prefix = unique_prefix();
    let ttl = Duration::from_secs(5);
    let (here, there) = (
        presence(&cluster, &prefix, ttl).await,
        presence(&cluster, &prefix, ttl).await,
    );
    // Enough users to land on every shard.
    let users: Vec<UserId> = (0..30).map(|_| UserId::new()).collect();
    for (n, user) in users.iter().enumerate() {
        here.heartbeat(*user, &format!("phone-{n}"))
            .await
            .expect("heartbeat in one slot");
        there
            .heartbeat(*user, "laptop")
            .await
            .expect("heartbeat in one slot");
    }
    let mut owners = HashSet::new();
    for user in &users {
        let set = format!("{prefix}:presence:{{{user}}}");
        let connection = format!("{prefix}:presence:{{{user}}}:laptop");
        let owner = cluster.owner_of(&set).await;
        assert_eq!(
            cluster.owner_of(&connection).await,
            owner,
            "one slot per user"
        );
        owners.insert(owner);
    }
    assert_eq!(owners.len(), 3, "the users are spread over the shards");

    let offline = UserId::new();
    let mut asked = users.clone();
    asked.push(offline);
    let online = there
        .online_among(&asked)
        .await
        .expect("query across shards");
    assert_eq!(online, users.iter().copied().collect::<HashSet<_>>());

    for (n, user) in users.iter().enumerate().take(10) {
        here.disconnect(*user, &format!("phone-{n}"))
            .await
            .expect("disconnect");
        there.disconnect(*user, "laptop").await.expect("disconnect");
    }
    let online = here.online_among(&asked).await.expect("query");
    assert_eq!(online, users[10..].iter().copied().collect::<HashSet<_>>());
}

/// Two instances over one database and the cluster, one prefix.
async fn two_instances(cluster: &RedisCluster) -> (TestServer, TestServer) {
    parley::telemetry::init();
    let db = TestDb::new().await;
    let log = EventLog::postgres(PostgresLog::new(db.pool.clone()));
    let prefix = unique_prefix();
    let options = |relay, presence| AppOptions {
        projector: fast_projector(),
        relay,
        presence,
    };
    let ttl = Duration::from_secs(2);
    let a = TestServer::on_log(
        log.clone(),
        Some(db),
        options(
            relay(cluster, &prefix).await,
            presence(cluster, &prefix, ttl).await,
        ),
        WsConfig::default(),
    )
    .await;
    let b = TestServer::on_log(
        log,
        None,
        options(
            relay(cluster, &prefix).await,
            presence(cluster, &prefix, ttl).await,
        ),
        WsConfig::default(),
    )
    .await;
    (a, b)
}

/// Collects seqs of subscription `id` until it has `count`, then checks nothing follows.
async fn collect(mut client: WsClient, who: String, id: &'static str, count: usize) -> Vec<i64> {
    let mut seqs = Vec::with_capacity(count);
    while seqs.len() < count {
        let Ok(message) = tokio::time::timeout(Duration::from_secs(14), client.next(id)).await
        else {
            panic!(
                "{who}: no message within 14 s; {} of {count} so far, from {:?} to {:?}",
                seqs.len(),
                seqs.first(),
                &seqs[seqs.len().saturating_sub(5)..]
            );
        };
        seqs.push(message["messages"]["seq"].as_i64().expect("seq"));
    }
    client.quiet(id, Duration::from_millis(500)).await;
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_rooms_master_mid_stream_loses_and_repeats_nothing_across_instances() {
    let mut cluster = RedisCluster::start(3).await;
    let (a, b) = two_instances(&cluster).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "general", &[]).await;
    b.join(&bob, &room).await;
    let room_id = RoomId::parse(&room).expect("room id");
    let owner = cluster
        .owner_of(&b.app.relay.channel_name(&Channel::Room(room_id)))
        .await;

    // Subscribers on B (the other instance than the sender) and one on A.
    let mut subscribers = Vec::new();
    for (server, who, user) in [
        (&b, "bob on B", &bob),
        (&b, "alice on B", &alice),
        (&a, "bob on A", &bob),
    ] {
        let mut client = WsClient::connect(server.addr, &user.token).await;
        client
            .subscribe("m", MESSAGES, json!({ "r": room, "a": null }))
            .await;
        subscribers.push((who.to_owned(), client));
    }
    // A subscriber on B that stays to the end, so the room's channel is still wanted on B
    // when the test checks, after the collectors have left, that the restarted master holds
    // it again.
    let mut watcher = WsClient::connect(b.addr, &bob.token).await;
    watcher
        .subscribe("w", MESSAGES, json!({ "r": room, "a": null }))
        .await;
    let room_channel = b.app.relay.channel_name(&Channel::Room(room_id));
    eventually(
        "both instances subscribe the room's shard channel",
        || async {
            cluster
                .shard_channels(owner, &room_channel)
                .await
                .contains(&room_channel)
                && a.app.relay.active_channels().contains(&room_channel)
        },
    )
    .await;
    // Started (without `after`, each starts at what the read model holds then).
    b.wait_for_feeds(&room, 3).await;
    a.wait_for_feeds(&room, 1).await;
    const TOTAL: usize = 200;
    const KILL_AT: usize = 60;
    // Messages sent while the master is down (the outage spans them, however slow the
    // machine; each subscriber waits at most 15 s for a message).
    const DURING: usize = 20;
    let collectors: Vec<_> = subscribers
        .into_iter()
        .map(|(who, client)| tokio::spawn(collect(client, who, "m", TOTAL)))
        .collect();

    // Alice sends from A all along; the room's master dies after KILL_AT messages and comes
    // back DURING messages later.
    let url = a.url("/graphql");
    let token = alice.token.clone();
    let sender_room = room.clone();
    let (sent_tx, mut sent_rx) = tokio::sync::watch::channel(0usize);
    let sender = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let query = "mutation($r: ID!, $c: String!) { sendMessage(roomId: $r, body: \"x\", clientMsgId: $c) { seq } }";
        for i in 0..TOTAL {
            let body =
                json!({ "query": query, "variables": { "r": sender_room, "c": format!("c{i}") } });
            let response: Value = http
                .post(&url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(response.get("errors").is_none(), "{response}");
            sent_tx.send_replace(i + 1);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    sent_rx
        .wait_for(|sent| *sent >= KILL_AT)
        .await
        .expect("sender");
    cluster.kill(owner);
    sent_rx
        .wait_for(|sent| *sent >= KILL_AT + DURING)
        .await
        .expect("sender");
    cluster.restart(owner).await;
    sender.await.expect("sender finished");

    for collector in collectors {
        let seqs = collector.await.expect("collector");
        assert_eq!(
            seqs,
            (1..=TOTAL as i64).collect::<Vec<_>>(),
            "every subscriber gets 1..{TOTAL} exactly once, in order"
        );
    }
    let stats = b.app.relay.stats();
    assert!(stats.disconnects > 0, "B noticed the master go: {stats:?}");
    assert!(
        stats.resyncs > 0,
        "B's subscribers were told to re-read: {stats:?}"
    );
    // The room's channel is subscribed again on the restarted master, live.
    eventually("the room is subscribed on its master again", || async {
        cluster
            .shard_channels(owner, &room_channel)
            .await
            .contains(&room_channel)
    })
    .await;
    let mut late = WsClient::connect(b.addr, &bob.token).await;
    late.subscribe("m", MESSAGES, json!({ "r": room, "a": TOTAL }))
        .await;
    b.wait_for_subscribers(&Channel::Room(room_id), 2).await;
    a.send(&alice, &room, "after", "after").await;
    assert_eq!(late.next("m").await["messages"]["seq"], TOTAL as i64 + 1);
    drop(watcher);
    a.stop().await;
    b.stop().await;
}
