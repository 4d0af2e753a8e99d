//! The write path against real stores: the command layer over the Postgres event store (a
//! fresh database per test) and over the embedded store, with the same scenarios.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use cqrs_es::persist::SerializedEvent;
use cqrs_es::{Aggregate, EventStore};
use parley::commands::{CommandBus, CommandError, CommandMeta};
use parley::store::{AggregateStore, EventLog, PostgresLog, SNAPSHOT_EVERY};
use parley_domain::room::IDEMPOTENCY_WINDOW;
use parley_domain::{Room, RoomError, RoomId, User, UserError, UserId, ValueError};
use support::TestDb;

/// A store under test; the database (if any) lives as long as the harness.
struct Harness {
    _db: Option<TestDb>,
    log: EventLog,
}

impl Harness {
    async fn postgres() -> Self {
        let db = TestDb::new().await;
        let log = EventLog::postgres(PostgresLog::new(db.pool.clone()));
        Self { _db: Some(db), log }
    }

    fn memory() -> Self {
        Self {
            _db: None,
            log: EventLog::memory(),
        }
    }

    /// A server instance: its own cache and locks over the shared log.
    fn instance(&self) -> Arc<CommandBus> {
        Arc::new(CommandBus::new(self.log.clone()))
    }

    async fn room_events(&self, room: RoomId) -> Vec<SerializedEvent> {
        self.log
            .events_after::<Room>(&room.to_string(), 0)
            .await
            .expect("reading the room's events")
    }

    async fn message_seqs(&self, room: RoomId) -> Vec<u64> {
        self.room_events(room)
            .await
            .into_iter()
            .filter(|e| e.event_type == "MessageSent")
            .map(|e| e.payload["MessageSent"]["seq"].as_u64().expect("seq"))
            .collect()
    }
}

/// Runs a scenario against Postgres and against the embedded store.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_postgres() {
                super::$scenario(super::Harness::postgres().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_the_embedded_store() {
                super::$scenario(super::Harness::memory()).await;
            }
        }
    )*};
}

on_both_stores!(
    one_hundred_concurrent_senders_get_seq_1_to_100_without_error,
    a_repeated_client_msg_id_returns_the_original_message_forever,
    concurrent_repeats_of_one_client_msg_id_store_one_message,
    bad_input_is_refused_with_a_typed_error_and_changes_nothing,
    a_room_loaded_from_a_snapshot_equals_a_full_replay,
    every_event_carries_actor_request_id_and_timestamp,
    a_username_can_be_registered_only_once_even_concurrently,
    membership_commands_follow_the_rules,
);

fn meta(actor: Option<UserId>) -> CommandMeta {
    CommandMeta::new(actor, format!("req-{}", uuid::Uuid::new_v4()))
}

async fn register(bus: &CommandBus, username: &str) -> UserId {
    bus.register_user(username, "$argon2id$v=19$test-hash".to_owned(), &meta(None))
        .await
        .unwrap_or_else(|e| panic!("registering {username}: {e}"))
}

/// A room hosted by a fresh user, with `members` more users joined.
async fn room_with_members(bus: &CommandBus, members: usize) -> (RoomId, Vec<UserId>) {
    let host = register(bus, "host").await;
    let room = bus
        .create_room(host, "general", Vec::new(), &meta(Some(host)))
        .await
        .expect("creating a room");
    let mut users = vec![host];
    for i in 0..members {
        let user = register(bus, &format!("member_{i}")).await;
        bus.join_room(room, user, &meta(Some(user)))
            .await
            .expect("joining");
        users.push(user);
    }
    (room, users)
}

async fn one_hundred_concurrent_senders_get_seq_1_to_100_without_error(h: Harness) {
    let bus = h.instance();
    let (room, users) = room_with_members(&bus, 4).await;
    let sends = (0..100).map(|i| {
        let bus = bus.clone();
        let sender = users[i % users.len()];
        tokio::spawn(async move {
            bus.send_message(
                room,
                sender,
                &format!("message {i}"),
                &format!("c{i}"),
                &meta(Some(sender)),
            )
            .await
        })
    });
    let mut returned = BTreeSet::new();
    for result in futures::future::join_all(sends).await {
        let message = result.expect("task").expect("every send succeeds");
        assert!(!message.repeated);
        returned.insert(message.seq.0);
    }
    assert_eq!(returned, (1..=100).collect::<BTreeSet<_>>());
    assert_eq!(h.message_seqs(room).await, (1..=100).collect::<Vec<_>>());
}

async fn a_repeated_client_msg_id_returns_the_original_message_forever(h: Harness) {
    let bus = h.instance();
    let (room, users) = room_with_members(&bus, 0).await;
    let host = users[0];
    let original = bus
        .send_message(room, host, "hello", "first", &meta(Some(host)))
        .await
        .unwrap();
    assert_eq!(original.seq.0, 1);

    // Within the aggregate's window, even with a different body.
    let again = bus
        .send_message(room, host, "hello, edited", "first", &meta(Some(host)))
        .await
        .unwrap();
    assert!(again.repeated);
    assert_eq!(
        (again.message_id, again.seq, again.body.as_str()),
        (original.message_id, original.seq, "hello")
    );

    // Long after it left the window.
    for i in 0..IDEMPOTENCY_WINDOW + 10 {
        bus.send_message(room, host, "filler", &format!("f{i}"), &meta(Some(host)))
            .await
            .unwrap();
    }
    let late = bus
        .send_message(room, host, "hello", "first", &meta(Some(host)))
        .await
        .unwrap();
    assert!(late.repeated);
    assert_eq!(late.message_id, original.message_id);

    // After a restart (an instance with a cold cache).
    let restarted = h.instance();
    let after_restart = restarted
        .send_message(room, host, "hello", "first", &meta(Some(host)))
        .await
        .unwrap();
    assert_eq!(after_restart.message_id, original.message_id);

    let seqs = h.message_seqs(room).await;
    assert_eq!(
        seqs.len(),
        1 + IDEMPOTENCY_WINDOW + 10,
        "no repeat was stored"
    );
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

async fn concurrent_repeats_of_one_client_msg_id_store_one_message(h: Harness) {
    let setup = h.instance();
    let (room, users) = room_with_members(&setup, 0).await;
    let host = users[0];
    // Two instances, ten tries each, all with the same clientMsgId.
    let instances = [h.instance(), h.instance()];
    let tries = (0..20).map(|i| {
        let bus = instances[i % 2].clone();
        tokio::spawn(async move {
            bus.send_message(room, host, "once", "same-id", &meta(Some(host)))
                .await
        })
    });
    let mut ids = BTreeSet::new();
    for result in futures::future::join_all(tries).await {
        ids.insert(
            result
                .expect("task")
                .expect("every try succeeds")
                .message_id,
        );
    }
    assert_eq!(ids.len(), 1, "every try returns the same message");
    assert_eq!(h.message_seqs(room).await, vec![1]);
}

async fn bad_input_is_refused_with_a_typed_error_and_changes_nothing(h: Harness) {
    let bus = h.instance();
    let (room, users) = room_with_members(&bus, 0).await;
    let host = users[0];
    let outsider = register(&bus, "outsider").await;
    let before = h.room_events(room).await;

    fn refused<T: std::fmt::Debug>(result: Result<T, CommandError<RoomError>>) -> RoomError {
        match result {
            Err(CommandError::Rejected(error)) => error,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    assert_eq!(
        refused(
            bus.send_message(room, host, "   \n", "c1", &meta(Some(host)))
                .await
        ),
        RoomError::InvalidBody(ValueError::BodyBlank)
    );
    assert_eq!(
        refused(
            bus.send_message(room, host, &"x".repeat(4001), "c2", &meta(Some(host)))
                .await
        ),
        RoomError::InvalidBody(ValueError::BodyTooLong {
            max: 4000,
            len: 4001
        })
    );
    assert_eq!(
        refused(
            bus.send_message(room, host, "hi", "", &meta(Some(host)))
                .await
        ),
        RoomError::InvalidClientMsgId(ValueError::ClientMsgIdLength {
            min: 1,
            max: 64,
            len: 0
        })
    );
    assert_eq!(
        refused(
            bus.send_message(room, outsider, "hi", "c3", &meta(Some(outsider)))
                .await
        ),
        RoomError::NotMember
    );
    assert_eq!(
        refused(
            bus.send_message(RoomId::new(), host, "hi", "c4", &meta(Some(host)))
                .await
        ),
        RoomError::UnknownRoom
    );
    assert_eq!(
        refused(
            bus.create_room(host, " ", Vec::new(), &meta(Some(host)))
                .await
                .map(|_| ())
        ),
        RoomError::InvalidName(ValueError::RoomNameBlank)
    );
    let ghost = UserId::new();
    assert_eq!(
        refused(
            bus.create_room(host, "x", vec![ghost], &meta(Some(host)))
                .await
                .map(|_| ())
        ),
        RoomError::UnknownParticipant(ghost)
    );
    assert_eq!(
        h.room_events(room).await,
        before,
        "the room's stream is unchanged"
    );

    match bus
        .register_user("No Spaces", "hash".into(), &meta(None))
        .await
    {
        Err(CommandError::Rejected(UserError::InvalidUsername(
            ValueError::UsernameCharacter { found: 'N' },
        ))) => {}
        other => panic!("expected an invalid username, got {other:?}"),
    }
}

async fn a_room_loaded_from_a_snapshot_equals_a_full_replay(h: Harness) {
    // Snapshots every 7 events, so a few hundred events cross many snapshots.
    let snapshotting = Arc::new(CommandBus::with_stores(
        h.log.clone(),
        AggregateStore::new(h.log.clone()),
        AggregateStore::with_options(h.log.clone(), 100, 7, Vec::new()),
    ));
    let (room, users) = room_with_members(&snapshotting, 3).await;
    for i in 0..300 {
        let left = i > 150 && i % users.len() == 1;
        let sender = if left {
            users[0]
        } else {
            users[i % users.len()]
        };
        snapshotting
            .send_message(room, sender, "hi", &format!("m{i}"), &meta(Some(sender)))
            .await
            .unwrap();
        if i == 150 {
            snapshotting
                .leave_room(room, users[1], &meta(Some(users[1])))
                .await
                .unwrap();
        }
    }

    // A cold store starts from the latest snapshot; a plain fold starts from nothing.
    let cold = AggregateStore::<Room>::with_options(h.log.clone(), 100, 7, Vec::new());
    let from_snapshot = cold.load_aggregate(&room.to_string()).await.unwrap();
    assert!(
        cold.rows_read() <= 8,
        "read {} rows: the snapshot was not used",
        cold.rows_read()
    );

    let mut replayed = Room::default();
    for envelope in cold.load_events(&room.to_string()).await.unwrap() {
        replayed.apply(envelope.payload);
    }
    assert_eq!(
        from_snapshot.state(),
        &replayed,
        "each event is applied exactly once"
    );
    assert_eq!(replayed.last_seq().0, 300);
    assert!(!replayed.is_member(users[1]));
}

async fn every_event_carries_actor_request_id_and_timestamp(h: Harness) {
    let bus = h.instance();
    let host = register(&bus, "host").await;
    let request = CommandMeta::new(Some(host), "req-42");
    let room = bus
        .create_room(host, "general", Vec::new(), &request)
        .await
        .unwrap();
    bus.send_message(room, host, "hi", "c1", &request)
        .await
        .unwrap();
    let events = h.room_events(room).await;
    assert_eq!(events.len(), 2);
    for event in events {
        assert_eq!(event.metadata["actor"], host.to_string());
        assert_eq!(event.metadata["request_id"], "req-42");
        let at = event.metadata["timestamp"].as_str().expect("timestamp");
        chrono::DateTime::parse_from_rfc3339(at).expect("an RFC 3339 timestamp");
    }
}

async fn a_username_can_be_registered_only_once_even_concurrently(h: Harness) {
    let instances = [h.instance(), h.instance()];
    let tries = (0..10).map(|i| {
        let bus = instances[i % 2].clone();
        tokio::spawn(async move { bus.register_user("alice", "hash".into(), &meta(None)).await })
    });
    let mut registered = 0;
    for result in futures::future::join_all(tries).await {
        match result.expect("task") {
            Ok(_) => registered += 1,
            Err(CommandError::Rejected(UserError::UsernameTaken(name))) => {
                assert_eq!(name.as_str(), "alice")
            }
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(registered, 1);
}

async fn membership_commands_follow_the_rules(h: Harness) {
    let bus = h.instance();
    let host = register(&bus, "host").await;
    let guest = register(&bus, "guest").await;
    let room = bus
        .create_room(host, "general", vec![guest], &meta(Some(host)))
        .await
        .unwrap();
    let store = AggregateStore::<Room>::new(h.log.clone());
    let state = store.load_aggregate(&room.to_string()).await.unwrap();
    assert!(state.state().invited().contains(&guest));

    bus.join_room(room, guest, &meta(Some(guest)))
        .await
        .unwrap();
    assert!(matches!(
        bus.join_room(room, guest, &meta(Some(guest))).await,
        Err(CommandError::Rejected(RoomError::AlreadyMember))
    ));
    bus.leave_room(room, guest, &meta(Some(guest)))
        .await
        .unwrap();
    assert!(matches!(
        bus.leave_room(room, guest, &meta(Some(guest))).await,
        Err(CommandError::Rejected(RoomError::NotMember))
    ));
    let types: Vec<_> = h
        .room_events(room)
        .await
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(
        types,
        ["RoomCreated", "MemberInvited", "MemberJoined", "MemberLeft"]
    );
}

// ---- Postgres only: costs and the global-log columns -------------------------------------

/// Appends `count` MessageSent events to a room directly in SQL (fast fixture for a long
/// history), continuing its sequence and seq.
async fn bulk_messages(db: &TestDb, room: RoomId, sender: UserId, count: i64) {
    let (sequence, seq): (i64, i64) = sqlx::query_as(
        "SELECT max(sequence),
                coalesce(max((payload -> 'MessageSent' ->> 'seq')::bigint), 0)
           FROM events WHERE aggregate_type = 'Room' AND aggregate_id = $1",
    )
    .bind(room.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
           SELECT 'Room', $1, $2 + g, 'MessageSent', '1.0',
                  json_build_object('MessageSent', json_build_object(
                      'message_id', gen_random_uuid(), 'seq', $3 + g, 'sender', $4::text,
                      'body', 'bulk ' || g, 'client_msg_id', 'bulk-' || g,
                      'sent_at', '2026-11-20T00:00:00Z')),
                  '{}'::json
             FROM generate_series(1, $5::bigint) AS g"#,
    )
    .bind(room.to_string())
    .bind(sequence)
    .bind(seq)
    .bind(sender.to_string())
    .bind(count)
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_with_100k_events_accepts_a_message_reading_as_many_rows_as_a_fresh_room() {
    let h = Harness::postgres().await;
    let db = h._db.as_ref().expect("postgres");
    let bus = h.instance();
    let (fresh, fresh_users) = room_with_members(&bus, 0).await;
    let long_host = register(&bus, "long_host").await;
    let long = bus
        .create_room(long_host, "long", Vec::new(), &meta(None))
        .await
        .unwrap();
    bulk_messages(db, long, long_host, 100_000).await;

    // First contact replays the long room once and snapshots it.
    bus.send_message(long, long_host, "warm", "warm", &meta(None))
        .await
        .unwrap();
    bus.send_message(fresh, fresh_users[0], "warm", "warm", &meta(None))
        .await
        .unwrap();

    let rows_for = |bus: Arc<CommandBus>, room: RoomId, sender: UserId, id: &'static str| async move {
        let before = bus.room_store().rows_read();
        let sent = bus
            .send_message(room, sender, "hi", id, &meta(None))
            .await
            .unwrap();
        assert!(!sent.repeated);
        (bus.room_store().rows_read() - before, sent.seq.0)
    };

    // A running instance (cached rooms).
    let (warm_fresh, _) = rows_for(bus.clone(), fresh, fresh_users[0], "a").await;
    let (warm_long, seq) = rows_for(bus.clone(), long, long_host, "a").await;
    assert_eq!(seq, 100_002);
    assert_eq!(
        warm_long, warm_fresh,
        "a 100k-event room costs what a fresh room costs"
    );

    // A restarted instance (cold cache: snapshot plus the events after it).
    let restarted = h.instance();
    let (cold_fresh, _) = rows_for(restarted.clone(), fresh, fresh_users[0], "b").await;
    let (cold_long, _) = rows_for(restarted.clone(), long, long_host, "b").await;
    assert!(
        cold_long <= (SNAPSHOT_EVERY + 1) as u64,
        "cold load read {cold_long} rows"
    );
    eprintln!(
        "rows read to accept a message: warm cache: fresh room {warm_fresh}, 100k room {warm_long}; \
         cold cache: fresh room {cold_fresh}, 100k room {cold_long}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sending_to_one_room_retry_conflicts_and_lose_nothing() {
    let h = Harness::postgres().await;
    let setup = h.instance();
    let (room, users) = room_with_members(&setup, 3).await;
    let instances = [h.instance(), h.instance()];
    let sends = (0..100).map(|i| {
        let bus = instances[i % 2].clone();
        let sender = users[i % users.len()];
        tokio::spawn(async move {
            bus.send_message(room, sender, "hi", &format!("c{i}"), &meta(Some(sender)))
                .await
        })
    });
    let mut seqs = BTreeSet::new();
    for result in futures::future::join_all(sends).await {
        seqs.insert(
            result
                .expect("task")
                .expect("no conflict reaches the caller")
                .seq
                .0,
        );
    }
    assert_eq!(seqs, (1..=100).collect::<BTreeSet<_>>());
    assert_eq!(h.message_seqs(room).await, (1..=100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_events_get_their_position_at_insert_and_wake_listeners() {
    let h = Harness::postgres().await;
    let db = h._db.as_ref().expect("postgres");
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener.listen("parley_events").await.unwrap();

    let bus = h.instance();
    let user = register(&bus, "listened").await;
    let notification = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
        .await
        .expect("a NOTIFY within 5 s of the commit")
        .unwrap();
    assert_eq!(notification.channel(), "parley_events");

    let (id, has_xid, fresh, position): (i64, bool, bool, Option<i64>) = sqlx::query_as(
        "SELECT id, transaction_id IS NOT NULL,
                recorded_at > now() - interval '1 minute', position
           FROM events WHERE aggregate_type = 'User' AND aggregate_id = $1",
    )
    .bind(user.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(id > 0 && has_xid && fresh);
    let head: i64 = sqlx::query_scalar("SELECT position FROM log_head")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        position,
        Some(head),
        "the event got the newest position when it was inserted"
    );
}

#[tokio::test]
async fn the_event_store_refuses_a_second_user_registered_event_for_one_name() {
    // The unique index is the store's own guarantee, independent of the command layer.
    let h = Harness::postgres().await;
    let store = AggregateStore::<User>::new(h.log.clone());
    let event = |id: UserId| parley_domain::UserEvent::UserRegistered {
        user_id: id,
        username: parley_domain::Username::parse("dup").unwrap(),
        password_hash: "h".into(),
        registered_at: chrono::Utc::now(),
    };
    for (i, id) in [UserId::new(), UserId::new()].into_iter().enumerate() {
        let context = store.load_aggregate(&id.to_string()).await.unwrap();
        let result = store
            .commit(vec![event(id)], context, Default::default())
            .await;
        assert_eq!(
            result.is_ok(),
            i == 0,
            "only the first registration of 'dup' commits"
        );
    }
}
