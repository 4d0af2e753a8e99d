//! The live-event relay and presence against a real Redis (no mocks).
//!
//! Redis: `PARLEY_TEST_REDIS_URL`, else `REDIS_URL`, else `redis://127.0.0.1:6379`. If it is
//! unreachable these tests fail (never skip) and say how to start one. Every test works under
//! its own random prefix, so tests can share one Redis and run in parallel; connection kills
//! target this test's relay by its client name only.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use parley::relay::{
    Channel, Presence, PresenceConfig, Relay, RelayConfig, RelayItem, RelayKind, Subscription,
};
use parley_domain::{RoomId, UserId};
use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};

use support::redis::{
    admin, client_ids_named, kill_clients_named, redis_url, unique_prefix, unreachable_message,
    upstream_of, url_via, FaultyProxy,
};
use support::{eventually, WAIT};

async fn redis_relay(prefix: &str) -> Relay {
    redis_relay_with(&redis_url(), RelayConfig::with_prefix(prefix)).await
}

async fn redis_relay_with(url: &str, config: RelayConfig) -> Relay {
    admin().await; // fail with the helpful message first
    match Relay::redis(url, config).await {
        Ok(relay) => relay,
        Err(error) => panic!("{}", unreachable_message(url, &error.to_string())),
    }
}

/// The next item, or a test failure after [`WAIT`].
async fn next(sub: &mut Subscription) -> RelayItem {
    match timeout(WAIT, sub.recv()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("subscription to {} closed", sub.channel()),
        Err(_) => panic!("nothing arrived on {} within {WAIT:?}", sub.channel()),
    }
}

async fn next_message(sub: &mut Subscription) -> Value {
    match next(sub).await {
        RelayItem::Message(relayed) => relayed.value().clone(),
        other => panic!("expected a message on {}, got {other:?}", sub.channel()),
    }
}

/// Asserts that nothing arrives on `sub` for `quiet`.
async fn assert_quiet(sub: &mut Subscription, quiet: Duration) {
    if let Ok(item) = timeout(quiet, sub.recv()).await {
        panic!("expected nothing more on {}, got {item:?}", sub.channel());
    }
}

/// `PUBSUB CHANNELS {prefix}:*`, sorted.
async fn redis_channels(prefix: &str) -> Vec<String> {
    let mut conn = admin().await;
    let mut channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("PUBSUB CHANNELS");
    channels.sort();
    channels
}

/// Kills this relay's Redis connection (and only it), as a network failure would.
async fn kill_connection_of(relay: &Relay) {
    let name = relay
        .client_name()
        .expect("a Redis relay has a client name");
    let name = name.to_owned();
    eventually("the relay's connection carries its name", || {
        let name = name.clone();
        async move { !client_ids_named(&name).await.is_empty() }
    })
    .await;
    kill_clients_named(&name).await;
}

async fn wait_until_received(relay: &Relay, count: u64) {
    eventually(&format!("{count} messages reached the relay"), || async {
        relay.stats().received >= count
    })
    .await;
}

fn numbers(from: u64, to: u64) -> Vec<Value> {
    (from..to).map(|n| json!({ "n": n })).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_on_one_instance_reaches_the_other_in_order_exactly_once() {
    let prefix = unique_prefix();
    let a = redis_relay(&prefix).await;
    let b = redis_relay(&prefix).await;
    assert_eq!(a.kind(), RelayKind::Redis);
    a.ping().await.expect("ping");

    let room = Channel::Room(RoomId::new());
    let other_room = Channel::Room(RoomId::new());
    let mut a1 = a.subscribe(&room).await.expect("subscribe a1");
    let mut a2 = a.subscribe(&room).await.expect("subscribe a2");
    let mut a_other = a.subscribe(&other_room).await.expect("subscribe other");
    let mut b1 = b.subscribe(&room).await.expect("subscribe b1");

    let sent = numbers(0, 50);
    for payload in &sent {
        b.publish(&room, payload).await.expect("publish");
    }
    for sub in [&mut a1, &mut a2, &mut b1] {
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            got.push(next_message(sub).await);
        }
        assert_eq!(got, sent, "in publish order, on {}", sub.channel());
    }
    for sub in [&mut a1, &mut a2, &mut b1, &mut a_other] {
        assert_quiet(sub, Duration::from_millis(200)).await;
    }

    // User and broadcast channels.
    let user = Channel::User(UserId::new());
    let mut b_user = b.subscribe(&user).await.expect("subscribe user");
    a.publish(&user, &json!({"invited": true}))
        .await
        .expect("publish");
    assert_eq!(next_message(&mut b_user).await, json!({"invited": true}));
    let mut a_all = a.subscribe(&Channel::Broadcast).await.expect("subscribe");
    let mut b_all = b.subscribe(&Channel::Broadcast).await.expect("subscribe");
    a.publish(&Channel::Broadcast, &json!("hello all"))
        .await
        .expect("publish");
    assert_eq!(next_message(&mut a_all).await, json!("hello all"));
    assert_eq!(next_message(&mut b_all).await, json!("hello all"));

    // A payload that is not JSON (published by someone else) is dropped, not fatal.
    let mut conn = admin().await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(a.channel_name(&room))
        .arg("not json")
        .query_async(&mut conn)
        .await
        .expect("PUBLISH");
    b.publish(&room, &json!({"after": "garbage"}))
        .await
        .expect("publish");
    assert_eq!(next_message(&mut a1).await, json!({"after": "garbage"}));
    assert_eq!(a.stats().malformed, 1);

    let stats = b.stats();
    assert_eq!(stats.published, 51);
    assert_eq!(stats.publish_commands, 51);
    assert_eq!(stats.publish_errors, 0);
    let stats = a.stats();
    // room, other room and broadcast: one SUBSCRIBE each, however many local subscribers.
    assert_eq!(stats.subscribe_commands, 3);
    // 50 numbers and "after garbage" to a1 and a2, "hello all" to a_all.
    assert_eq!(stats.deliveries, 51 * 2 + 1);
}

#[tokio::test]
async fn the_in_process_relay_delivers_and_counts_references() {
    let relay = Relay::in_process(RelayConfig::with_prefix("solo")).expect("relay");
    assert_eq!(relay.kind(), RelayKind::InProcess);
    assert_eq!(relay.client_name(), None);
    relay.ping().await.expect("ping");

    let room_id = RoomId::new();
    let room = Channel::Room(room_id);
    assert_eq!(relay.channel_name(&room), format!("solo:room:{room_id}"));
    let user_id = UserId::new();
    assert_eq!(
        relay.channel_name(&Channel::User(user_id)),
        format!("solo:user:{user_id}")
    );
    assert_eq!(relay.channel_name(&Channel::Broadcast), "solo:broadcast");

    // Nobody listening: fine, nothing kept.
    relay.publish(&room, &json!(0)).await.expect("publish");
    assert!(relay.active_channels().is_empty());

    let mut s1 = relay.subscribe(&room).await.expect("subscribe");
    let mut s2 = relay.subscribe(&room).await.expect("subscribe");
    let mut other = relay
        .subscribe(&Channel::Room(RoomId::new()))
        .await
        .expect("subscribe");
    assert_eq!(relay.active_channels().len(), 2);

    let sent = numbers(0, 20);
    for payload in &sent {
        relay.publish(&room, payload).await.expect("publish");
    }
    for sub in [&mut s1, &mut s2] {
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            got.push(next_message(sub).await);
        }
        assert_eq!(got, sent);
        assert_eq!(sub.try_recv(), None);
    }
    assert_eq!(other.try_recv(), None);

    drop(s1);
    assert_eq!(relay.active_channels().len(), 2);
    drop(s2);
    assert_eq!(relay.active_channels(), vec![other.channel().to_owned()]);
    drop(other);
    assert!(relay.active_channels().is_empty());

    let stats = relay.stats();
    assert_eq!(stats.redis_commands(), 0);
    assert_eq!(stats.published, 21);
    assert_eq!(stats.deliveries, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_channel_is_subscribed_only_while_it_has_local_subscribers() {
    let prefix = unique_prefix();
    let relay = redis_relay(&prefix).await;
    let x = Channel::Room(RoomId::new());
    let y = Channel::Room(RoomId::new());
    let (x_name, y_name) = (relay.channel_name(&x), relay.channel_name(&y));
    let both = {
        let mut both = vec![x_name.clone(), y_name.clone()];
        both.sort();
        both
    };

    let x1 = relay.subscribe(&x).await.expect("subscribe");
    let x2 = relay.subscribe(&x).await.expect("subscribe");
    let y1 = relay.subscribe(&y).await.expect("subscribe");
    // subscribe() returns after Redis confirmed: no waiting needed here.
    assert_eq!(redis_channels(&prefix).await, both);
    assert_eq!(relay.active_channels(), both);
    assert_eq!(relay.stats().subscribe_commands, 2);

    drop(x1);
    sleep(Duration::from_millis(200)).await;
    assert_eq!(redis_channels(&prefix).await, both, "x2 still listens");
    assert_eq!(relay.stats().unsubscribe_commands, 0);

    drop(x2);
    assert_eq!(relay.active_channels(), vec![y_name.clone()]);
    eventually("x is unsubscribed in Redis", || async {
        redis_channels(&prefix).await == vec![y_name.clone()]
    })
    .await;
    assert_eq!(relay.stats().unsubscribe_commands, 1);

    drop(y1);
    eventually("nothing is subscribed in Redis", || async {
        redis_channels(&prefix).await.is_empty()
    })
    .await;
    assert!(relay.active_channels().is_empty());

    // Subscribe and drop concurrently, many times: the end state must still be exact.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let relay = relay.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let sub = relay.subscribe(&x).await.expect("subscribe");
                tokio::task::yield_now().await;
                drop(sub);
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert!(relay.active_channels().is_empty());
    eventually("nothing is subscribed after the churn", || async {
        redis_channels(&prefix).await.is_empty()
    })
    .await;
    let stats = relay.stats();
    assert!(
        stats.subscribe_commands < 2 + 16 * 20,
        "reference counting saves commands: {stats:?}"
    );

    // And the channel still works afterwards.
    let mut x3 = relay.subscribe(&x).await.expect("subscribe");
    assert_eq!(redis_channels(&prefix).await, vec![x_name.clone()]);
    relay
        .publish(&x, &json!("still works"))
        .await
        .expect("publish");
    assert_eq!(next_message(&mut x3).await, json!("still works"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_connection_is_killed_a_subscription_gets_resync_then_new_messages() {
    let prefix = unique_prefix();
    let a = redis_relay(&prefix).await;
    let b = redis_relay(&prefix).await;
    let room = Channel::Room(RoomId::new());
    let user = Channel::User(UserId::new());
    let mut sub = a.subscribe(&room).await.expect("subscribe");
    let mut user_sub = a.subscribe(&user).await.expect("subscribe");

    b.publish(&room, &json!(1)).await.expect("publish");
    assert_eq!(next_message(&mut sub).await, json!(1));

    kill_connection_of(&a).await;
    assert_eq!(next(&mut sub).await, RelayItem::Resync);
    assert_eq!(next(&mut user_sub).await, RelayItem::Resync);

    // Resubscribed before Resync was sent: this message must arrive.
    b.publish(&room, &json!(2)).await.expect("publish");
    assert_eq!(next_message(&mut sub).await, json!(2));
    b.publish(&user, &json!("u")).await.expect("publish");
    assert_eq!(next_message(&mut user_sub).await, json!("u"));
    assert_quiet(&mut sub, Duration::from_millis(200)).await;

    let mut expected = vec![a.channel_name(&room), a.channel_name(&user)];
    expected.sort();
    assert_eq!(redis_channels(&prefix).await, expected);
    let name = a.client_name().expect("name").to_owned();
    eventually("the new connection is named again", || {
        let name = name.clone();
        async move { client_ids_named(&name).await.len() == 1 }
    })
    .await;
    a.publish(&room, &json!(3))
        .await
        .expect("publish after reconnect");
    assert_eq!(next_message(&mut sub).await, json!(3));
    a.ping().await.expect("ping after reconnect");

    let stats = a.stats();
    assert!(stats.disconnects >= 1, "{stats:?}");
    assert_eq!(stats.resyncs, 2, "one per channel with subscribers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_publish_and_ping_then_subscriptions_resync() {
    let prefix = unique_prefix();
    let url = redis_url();
    let proxy = FaultyProxy::start(upstream_of(&url)).await;
    let proxied_url = url_via(&url, proxy.addr);

    let config = RelayConfig {
        timeout: Duration::from_secs(1),
        ..RelayConfig::with_prefix(&prefix)
    };
    let a = redis_relay_with(&proxied_url, config).await;
    let b = redis_relay(&prefix).await;
    let room = Channel::Room(RoomId::new());
    let mut sub = a.subscribe(&room).await.expect("subscribe");
    b.publish(&room, &json!("before")).await.expect("publish");
    assert_eq!(next_message(&mut sub).await, json!("before"));

    proxy.cut();
    eventually("the relay noticed the outage", || async {
        a.stats().disconnects >= 1
    })
    .await;
    let publish = a.publish(&room, &json!("into the void")).await;
    assert!(publish.is_err(), "publish during an outage: {publish:?}");
    assert!(a.ping().await.is_err(), "ping during an outage");
    let late = a.subscribe(&Channel::Room(RoomId::new())).await;
    assert!(late.is_err(), "subscribe during an outage: {late:?}");
    b.publish(&room, &json!("lost")).await.expect("publish");
    assert_eq!(a.stats().publish_errors, 1);

    proxy.restore();
    assert_eq!(next(&mut sub).await, RelayItem::Resync);
    b.publish(&room, &json!("after")).await.expect("publish");
    assert_eq!(
        next_message(&mut sub).await,
        json!("after"),
        "what was published during the outage is gone; the subscriber re-syncs instead"
    );
    a.ping().await.expect("ping after the outage");
    a.publish(&room, &json!("mine")).await.expect("publish");
    assert_eq!(next_message(&mut sub).await, json!("mine"));
    // The failed subscribe left nothing behind.
    assert_eq!(a.active_channels(), vec![a.channel_name(&room)]);
    eventually("only the live channel is subscribed", || async {
        redis_channels(&prefix).await == vec![a.channel_name(&room)]
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_panic() {
    // Nothing listens on port 1.
    let relay = Relay::redis("redis://127.0.0.1:1", RelayConfig::default()).await;
    assert!(relay.is_err());
    let presence = Presence::redis("redis://127.0.0.1:1", PresenceConfig::default()).await;
    assert!(presence.is_err());
    let bad_prefix = Relay::in_process(RelayConfig::with_prefix("has space"));
    assert!(bad_prefix.is_err());
}

async fn lagging_subscriber_gets_lagged(relay: &Relay, publisher: &Relay) {
    let room = Channel::Room(RoomId::new());
    let mut slow = relay.subscribe(&room).await.expect("subscribe");
    let received_before = relay.stats().received;
    for payload in numbers(0, 20) {
        publisher.publish(&room, &payload).await.expect("publish");
    }
    wait_until_received(relay, received_before + 20).await;

    assert_eq!(next(&mut slow).await, RelayItem::Lagged(16));
    let mut rest = Vec::new();
    for _ in 0..4 {
        match slow.try_recv() {
            Some(RelayItem::Message(relayed)) => rest.push(relayed.value().clone()),
            other => panic!("expected a buffered message, got {other:?}"),
        }
    }
    assert_eq!(rest, numbers(16, 20), "the newest messages remain");
    assert_eq!(slow.try_recv(), None, "the buffer holds at most 4");
    assert_eq!(relay.stats().lagged, 16);

    // The subscription goes on normally.
    publisher
        .publish(&room, &json!("fresh"))
        .await
        .expect("publish");
    assert_eq!(next_message(&mut slow).await, json!("fresh"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_gets_lagged_instead_of_unbounded_buffering() {
    let small = |prefix: &str| RelayConfig {
        buffer: 4,
        ..RelayConfig::with_prefix(prefix)
    };
    let in_process = Relay::in_process(small("solo")).expect("relay");
    lagging_subscriber_gets_lagged(&in_process, &in_process).await;

    let prefix = unique_prefix();
    let a = redis_relay_with(&redis_url(), small(&prefix)).await;
    let b = redis_relay(&prefix).await;
    lagging_subscriber_gets_lagged(&a, &b).await;
}

const TTL: Duration = Duration::from_secs(2);

/// The presence contract, for both implementations.
async fn presence_behaves(presence: &Presence) {
    assert_eq!(presence.ttl(), TTL);
    let (alice, bob, carol) = (UserId::new(), UserId::new(), UserId::new());
    assert!(!presence.is_online(alice).await.expect("query"));

    // Two devices; the phone stops heartbeating, the laptop keeps going.
    presence.heartbeat(alice, "phone").await.expect("heartbeat");
    presence
        .heartbeat(alice, "laptop")
        .await
        .expect("heartbeat");
    assert!(presence.is_online(alice).await.expect("query"));
    let started = Instant::now();
    while started.elapsed() < TTL + Duration::from_millis(1500) {
        sleep(Duration::from_millis(400)).await;
        presence
            .heartbeat(alice, "laptop")
            .await
            .expect("heartbeat");
        assert!(
            presence.is_online(alice).await.expect("query"),
            "online while the laptop heartbeats ({:?} in)",
            started.elapsed()
        );
    }
    // Heartbeats stop: offline within one TTL, not before.
    sleep(TTL / 2).await;
    assert!(presence.is_online(alice).await.expect("query"));
    sleep(TTL / 2 + Duration::from_millis(300)).await;
    assert!(!presence.is_online(alice).await.expect("query"), "expired");

    // Explicit disconnects, per device.
    presence.heartbeat(bob, "tab-1").await.expect("heartbeat");
    presence.heartbeat(bob, "tab-2").await.expect("heartbeat");
    presence.heartbeat(carol, "tab").await.expect("heartbeat");
    presence.disconnect(bob, "tab-1").await.expect("disconnect");
    assert!(
        presence.is_online(bob).await.expect("query"),
        "tab-2 is open"
    );
    let online = presence
        .online_among(&[alice, bob, carol, bob, UserId::new()])
        .await
        .expect("query");
    assert_eq!(online, HashSet::from([bob, carol]));
    presence.disconnect(bob, "tab-2").await.expect("disconnect");
    assert!(
        !presence.is_online(bob).await.expect("query"),
        "both tabs closed"
    );
    presence.disconnect(carol, "tab").await.expect("disconnect");
    presence
        .disconnect(carol, "never-seen")
        .await
        .expect("disconnecting an unknown connection is fine");
    assert!(presence
        .online_among(&[alice, bob, carol])
        .await
        .expect("query")
        .is_empty());
    assert!(presence.online_among(&[]).await.expect("query").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_follows_heartbeats_across_instances() {
    let prefix = unique_prefix();
    admin().await;
    let config = PresenceConfig {
        prefix: prefix.clone(),
        ttl: TTL,
        ..PresenceConfig::default()
    };
    let presence = Presence::redis(&redis_url(), config.clone())
        .await
        .expect("presence");
    presence_behaves(&presence).await;

    // Another instance sees what this one wrote.
    let other = Presence::redis(&redis_url(), config)
        .await
        .expect("presence");
    let dave = UserId::new();
    presence.heartbeat(dave, "ws-1").await.expect("heartbeat");
    assert!(other.is_online(dave).await.expect("query"));
    other.disconnect(dave, "ws-1").await.expect("disconnect");
    assert!(!presence.is_online(dave).await.expect("query"));

    // Nothing is left behind in Redis once everyone is gone.
    let conn = admin().await;
    eventually("no presence keys remain", || {
        let mut conn = conn.clone();
        let pattern = format!("{prefix}:*");
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .expect("KEYS");
            keys.is_empty()
        }
    })
    .await;
}

#[tokio::test]
async fn in_memory_presence_behaves_the_same() {
    let presence = Presence::in_memory(PresenceConfig {
        ttl: TTL,
        ..PresenceConfig::default()
    })
    .expect("presence");
    presence_behaves(&presence).await;
}
