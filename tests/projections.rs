//! The read side against real stores: the projector's ordering, exactly-once and crash
//! guarantees on PostgreSQL, and the read models' behaviour on both stores.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use parley::app::App;
use parley::commands::CommandMeta;
use parley::store::{EventLog, PostgresLog};
use parley_domain::{MessageSeq, RoomId, UserId};
use parley_projections::postgres::{PgProjector, PgReadModels, ProjectorConfig};
use parley_projections::{LiveFeed, PageRequest, ReadModelError, ReadModels};
use sqlx::PgPool;
use support::apps::fast_config;
use support::checksums::{dump_all, TABLES};
use support::TestDb;

fn meta() -> CommandMeta {
    CommandMeta::system("test")
}

/// Waits until every projection has applied every committed event.
async fn caught_up(models: &ReadModels) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = models.status().await.expect("projection status");
        if status.iter().all(|s| s.lag_events == 0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projections did not catch up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Positions of all events, in position order; asserts every event has one.
async fn positions(pool: &PgPool) -> Vec<i64> {
    let unpositioned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE position IS NULL")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(unpositioned, 0, "every committed event has a position");
    sqlx::query_scalar("SELECT position FROM events ORDER BY position")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn insert_user_event(conn: &mut sqlx::PgConnection, name: &str) {
    sqlx::query(
        r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
           VALUES ('User', gen_random_uuid()::text, 1, 'UserRegistered', '1.0',
                   json_build_object('UserRegistered', json_build_object(
                       'user_id', gen_random_uuid(), 'username', $1::text,
                       'password_hash', 'h', 'registered_at', '2026-11-20T00:00:00Z')),
                   '{}')"#,
    )
    .bind(name)
    .execute(conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_slow_and_fast_writers_are_projected_once_each_in_a_gapless_order() {
    let db = TestDb::new().await;
    let live = LiveFeed::new();
    let mut feed = live.subscribe();
    let projector = PgProjector::new(db.pool.clone(), live, fast_config());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(projector.run(stop.clone().cancelled_owned()));

    // 40 writers x 10 transactions; every third transaction sleeps before it commits, so
    // later transactions commit first all the time.
    let writers = (0..40).map(|w| {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            for t in 0..10 {
                let mut tx = pool.begin().await.unwrap();
                insert_user_event(&mut tx, &format!("u_{w}_{t}")).await;
                if (w + t) % 3 == 0 {
                    sqlx::query("SELECT pg_sleep(0.03)")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.expect("writer");
    }
    let models = ReadModels::postgres(PgReadModels::new(db.pool.clone()));
    caught_up(&models).await;

    assert_eq!(
        positions(&db.pool).await,
        (1..=400).collect::<Vec<_>>(),
        "positions 1..400, no gap"
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users_view")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(users, 400, "each event applied exactly once");

    // Live: every event exactly once, in position order.
    let mut seen = Vec::new();
    while let Ok(batch) = feed.try_recv() {
        seen.extend(batch.iter().map(|(e, _)| e.position.0));
    }
    assert_eq!(seen, (1..=400).collect::<Vec<_>>());
    stop.cancel();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_killed_mid_batch_resumes_and_matches_a_rebuild_from_scratch() {
    let db = TestDb::new().await;
    let app = App::start(
        EventLog::postgres(PostgresLog::new(db.pool.clone())),
        "test-secret".into(),
        // The app's own projector: killed below by stopping the app.
        fast_config(),
    );
    let host = app
        .commands
        .register_user("host", "h".into(), &meta())
        .await
        .unwrap();
    let guest = app
        .commands
        .register_user("guest", "h".into(), &meta())
        .await
        .unwrap();
    let room = app
        .commands
        .create_room(host, "general", vec![guest], &meta())
        .await
        .unwrap();
    app.commands.join_room(room, guest, &meta()).await.unwrap();
    app.stop().await;

    // Writers keep going while projectors are started and aborted at random points.
    let bus = app.commands.clone();
    let writer = tokio::spawn(async move {
        for i in 0..1500 {
            let sender = if i % 2 == 0 { host } else { guest };
            bus.send_message(room, sender, "hello", &format!("m{i}"), &meta())
                .await
                .unwrap();
        }
    });
    for round in 0..6u64 {
        let projector = PgProjector::new(
            db.pool.clone(),
            LiveFeed::new(),
            ProjectorConfig {
                batch_size: 97,
                ..fast_config()
            },
        );
        let task = tokio::spawn(projector.run(std::future::pending()));
        tokio::time::sleep(Duration::from_millis(40 + 37 * round)).await;
        task.abort();
        let _ = task.await;
    }
    writer.await.unwrap();

    let projector = PgProjector::new(db.pool.clone(), LiveFeed::new(), fast_config());
    let mut session = wait_for_lock(&projector).await;
    projector.drain(&mut session).await.unwrap();
    let models = ReadModels::postgres(PgReadModels::new(db.pool.clone()));
    caught_up(&models).await;
    assert_eq!(positions(&db.pool).await.len(), 1505);
    let after_crashes = dump_all(&db.pool).await;

    models.reset(&[]).await.unwrap();
    projector.drain(&mut session).await.unwrap();
    let rebuilt = dump_all(&db.pool).await;
    for ((table, _, _), (live, fresh)) in TABLES.iter().zip(after_crashes.iter().zip(&rebuilt)) {
        assert_eq!(live, fresh, "{table} differs from a rebuild from scratch");
    }
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages_view")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(messages, 1500);
}

async fn wait_for_lock(projector: &PgProjector) -> parley_projections::postgres::ActiveSession {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(session) = projector.try_activate().await.unwrap() {
            return session;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projector lock was never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilding_one_projection_reproduces_its_tables_exactly() {
    let db = TestDb::new().await;
    let app = App::start(
        EventLog::postgres(PostgresLog::new(db.pool.clone())),
        "s".into(),
        fast_config(),
    );
    let users: Vec<UserId> = futures::future::join_all((0..5).map(|i| {
        let bus = app.commands.clone();
        async move {
            bus.register_user(&format!("user_{i}"), "h".into(), &meta())
                .await
                .unwrap()
        }
    }))
    .await;
    let room = app
        .commands
        .create_room(users[0], "r", users[1..3].to_vec(), &meta())
        .await
        .unwrap();
    for &user in &users[1..] {
        app.commands.join_room(room, user, &meta()).await.unwrap();
    }
    app.commands
        .leave_room(room, users[4], &meta())
        .await
        .unwrap();
    for i in 0..300 {
        let sender = users[i % 4];
        app.commands
            .send_message(room, sender, &format!("m{i}"), &format!("c{i}"), &meta())
            .await
            .unwrap();
    }
    app.read_models
        .mark_read(room, users[1], MessageSeq(120))
        .await
        .unwrap();
    caught_up(&app.read_models).await;
    let before = dump_all(&db.pool).await;

    for projection in ["messages", "rooms", "users"] {
        app.read_models.reset(&[projection]).await.unwrap();
        caught_up(&app.read_models).await;
        assert_eq!(
            dump_all(&db.pool).await,
            before,
            "after rebuilding {projection}"
        );
    }
    assert!(matches!(
        app.read_models.reset(&["nope"]).await,
        Err(ReadModelError::UnknownProjection(name)) if name == "nope"
    ));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_one_projector_works_and_a_standby_takes_over_from_the_checkpoint() {
    let db = TestDb::new().await;
    let log = EventLog::postgres(PostgresLog::new(db.pool.clone()));
    let bus = parley::commands::CommandBus::new(log);
    let live_a = LiveFeed::new();
    let live_b = LiveFeed::new();
    let mut feed_a = live_a.subscribe();
    let mut feed_b = live_b.subscribe();
    let a = tokio::spawn(
        PgProjector::new(db.pool.clone(), live_a, fast_config()).run(std::future::pending()),
    );
    for i in 0..20 {
        bus.register_user(&format!("early_{i}"), "h".into(), &meta())
            .await
            .unwrap();
    }
    let models = ReadModels::postgres(PgReadModels::new(db.pool.clone()));
    caught_up(&models).await;
    let b = tokio::spawn(
        PgProjector::new(db.pool.clone(), live_b, fast_config()).run(std::future::pending()),
    );

    // While A is active nobody else gets the lock.
    let third = PgProjector::new(db.pool.clone(), LiveFeed::new(), fast_config());
    assert!(
        third.try_activate().await.unwrap().is_none(),
        "a second projector became active"
    );
    for i in 0..20 {
        bus.register_user(&format!("middle_{i}"), "h".into(), &meta())
            .await
            .unwrap();
    }
    caught_up(&models).await;

    a.abort();
    let _ = a.await;
    for i in 0..20 {
        bus.register_user(&format!("late_{i}"), "h".into(), &meta())
            .await
            .unwrap();
    }
    caught_up(&models).await;

    let mut by_a = Vec::new();
    while let Ok(batch) = feed_a.try_recv() {
        by_a.extend(batch.iter().map(|(e, _)| e.position.0));
    }
    let mut by_b = Vec::new();
    while let Ok(batch) = feed_b.try_recv() {
        by_b.extend(batch.iter().map(|(e, _)| e.position.0));
    }
    assert_eq!(
        by_a,
        (1..=40).collect::<Vec<_>>(),
        "A projected the first 40 alone"
    );
    assert_eq!(
        by_b,
        (41..=60).collect::<Vec<_>>(),
        "B continued from A's checkpoint"
    );
    assert_eq!(positions(&db.pool).await, (1..=60).collect::<Vec<_>>());
    b.abort();
}

// ---- Read-model behaviour on both stores ---------------------------------------------

on_both_apps!(
    history_pages_forward_and_backward_by_seq,
    membership_follows_invitations_joins_and_leaves,
    unread_counts_follow_messages_joins_and_mark_read,
    the_user_directory_finds_users_by_id_and_username,
    the_live_feed_publishes_only_what_the_read_models_already_hold,
);

async fn room_with(app: &App, names: &[&str]) -> (RoomId, Vec<UserId>) {
    let mut users = Vec::new();
    for name in names {
        users.push(
            app.commands
                .register_user(name, "h".into(), &meta())
                .await
                .unwrap(),
        );
    }
    let room = app
        .commands
        .create_room(users[0], "general", Vec::new(), &meta())
        .await
        .unwrap();
    for &user in &users[1..] {
        app.commands.join_room(room, user, &meta()).await.unwrap();
    }
    (room, users)
}

fn seqs(page: &parley_projections::MessagePage) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq.0).collect()
}

async fn history_pages_forward_and_backward_by_seq(app: &App) {
    let (room, users) = room_with(app, &["pager"]).await;
    for i in 1..=130 {
        app.commands
            .send_message(
                room,
                users[0],
                &format!("body {i}"),
                &format!("c{i}"),
                &meta(),
            )
            .await
            .unwrap();
    }
    caught_up(&app.read_models).await;
    let models = &app.read_models;

    let newest = models.messages(room, PageRequest::default()).await.unwrap();
    assert_eq!(
        seqs(&newest),
        (81..=130).collect::<Vec<_>>(),
        "default: newest 50, oldest first"
    );
    assert!(newest.has_more);

    let first = models
        .messages(
            room,
            PageRequest {
                after: Some(0),
                first: Some(100),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(&first), (1..=100).collect::<Vec<_>>());
    assert!(first.has_more);
    let rest = models
        .messages(
            room,
            PageRequest {
                after: Some(100),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(&rest), (101..=130).collect::<Vec<_>>());
    assert!(!rest.has_more);

    let before = models
        .messages(
            room,
            PageRequest {
                before: Some(11),
                last: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(&before), vec![6, 7, 8, 9, 10]);
    assert!(before.has_more);
    let start = models
        .messages(
            room,
            PageRequest {
                before: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(&start), vec![1, 2]);
    assert!(!start.has_more);

    let message = &first.messages[41];
    assert_eq!(
        (
            message.seq,
            message.body.as_str(),
            message.client_msg_id.as_str()
        ),
        (MessageSeq(42), "body 42", "c42")
    );
    assert_eq!(message.sender, users[0]);
    assert!(message.position.0 > 0);

    assert!(matches!(
        models
            .messages(
                room,
                PageRequest {
                    first: Some(101),
                    ..Default::default()
                }
            )
            .await,
        Err(ReadModelError::Page(_))
    ));
    let empty = models
        .messages(RoomId::new(), PageRequest::default())
        .await
        .unwrap();
    assert!(empty.messages.is_empty() && !empty.has_more);
}

async fn membership_follows_invitations_joins_and_leaves(app: &App) {
    let host = app
        .commands
        .register_user("host", "h".into(), &meta())
        .await
        .unwrap();
    let invited = app
        .commands
        .register_user("invited", "h".into(), &meta())
        .await
        .unwrap();
    let walker = app
        .commands
        .register_user("walker", "h".into(), &meta())
        .await
        .unwrap();
    let room = app
        .commands
        .create_room(host, "general", vec![invited], &meta())
        .await
        .unwrap();
    app.commands.join_room(room, walker, &meta()).await.unwrap();
    caught_up(&app.read_models).await;
    let view = app.read_models.room(room).await.unwrap().expect("room");
    assert_eq!(view.host, host);
    assert_eq!(view.name, "general");
    assert_eq!(
        view.members.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([host, walker])
    );
    assert_eq!(view.invited, vec![invited]);
    assert!(app.read_models.is_member(room, walker).await.unwrap());
    assert!(!app.read_models.is_member(room, invited).await.unwrap());

    app.commands
        .join_room(room, invited, &meta())
        .await
        .unwrap();
    app.commands
        .leave_room(room, walker, &meta())
        .await
        .unwrap();
    caught_up(&app.read_models).await;
    let view = app.read_models.room(room).await.unwrap().expect("room");
    assert_eq!(
        view.members.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([host, invited])
    );
    assert!(view.invited.is_empty());
    assert!(
        app.read_models.rooms_of(walker).await.unwrap().is_empty(),
        "a leaver's list drops the room"
    );
    assert_eq!(app.read_models.rooms_of(invited).await.unwrap().len(), 1);
    assert!(app.read_models.room(RoomId::new()).await.unwrap().is_none());
}

async fn unread_counts_follow_messages_joins_and_mark_read(app: &App) {
    let (room, users) = room_with(app, &["alice", "bob"]).await;
    let (alice, bob) = (users[0], users[1]);
    let (quiet, _) = {
        let other = app
            .commands
            .create_room(bob, "quiet", Vec::new(), &meta())
            .await
            .unwrap();
        (other, ())
    };
    for i in 0..5 {
        app.commands
            .send_message(room, alice, "hi", &format!("a{i}"), &meta())
            .await
            .unwrap();
    }
    caught_up(&app.read_models).await;
    let list = app.read_models.rooms_of(bob).await.unwrap();
    assert_eq!(
        list.iter().map(|i| i.room.id).collect::<Vec<_>>(),
        vec![room, quiet],
        "most recent activity first"
    );
    assert_eq!(list[0].unread_count, 5);
    assert_eq!(
        list[0].last_message.as_ref().map(|m| m.seq),
        Some(MessageSeq(5))
    );
    assert_eq!(
        app.read_models.unread_count(room, alice).await.unwrap(),
        0,
        "a sender has read their own messages"
    );

    app.read_models
        .mark_read(room, bob, MessageSeq(3))
        .await
        .unwrap();
    assert_eq!(app.read_models.unread_count(room, bob).await.unwrap(), 2);
    app.read_models
        .mark_read(room, bob, MessageSeq(1))
        .await
        .unwrap();
    assert_eq!(
        app.read_models.unread_count(room, bob).await.unwrap(),
        2,
        "a cursor never moves back"
    );
    assert!(matches!(
        app.read_models.mark_read(room, bob, MessageSeq(6)).await,
        Err(ReadModelError::SeqOutOfRange {
            seq: MessageSeq(6),
            last_seq: MessageSeq(5)
        })
    ));
    app.commands
        .send_message(room, bob, "reply", "b1", &meta())
        .await
        .unwrap();
    caught_up(&app.read_models).await;
    assert_eq!(
        app.read_models.unread_count(room, bob).await.unwrap(),
        0,
        "replying reads up to one's own message"
    );

    let latecomer = app
        .commands
        .register_user("latecomer", "h".into(), &meta())
        .await
        .unwrap();
    app.commands
        .join_room(room, latecomer, &meta())
        .await
        .unwrap();
    caught_up(&app.read_models).await;
    assert_eq!(
        app.read_models.unread_count(room, latecomer).await.unwrap(),
        0,
        "history before joining is not unread"
    );
    app.commands
        .send_message(room, alice, "welcome", "a-w", &meta())
        .await
        .unwrap();
    caught_up(&app.read_models).await;
    assert_eq!(
        app.read_models.unread_count(room, latecomer).await.unwrap(),
        1
    );
}

async fn the_user_directory_finds_users_by_id_and_username(app: &App) {
    let id = app
        .commands
        .register_user("dora", "$argon2id$hash".into(), &meta())
        .await
        .unwrap();
    let other = app
        .commands
        .register_user("eve", "h".into(), &meta())
        .await
        .unwrap();
    app.commands
        .grant_role(id, parley_domain::Role::Analyst, &meta())
        .await
        .unwrap();
    caught_up(&app.read_models).await;
    let user = app.read_models.user(id).await.unwrap().expect("user");
    assert_eq!(user.username, "dora");
    assert_eq!(user.roles, vec!["analyst".to_owned()]);
    let credentials = app
        .read_models
        .credentials("dora")
        .await
        .unwrap()
        .expect("credentials");
    assert_eq!(
        (credentials.user.id, credentials.password_hash.as_str()),
        (id, "$argon2id$hash")
    );
    assert!(app
        .read_models
        .credentials("nobody")
        .await
        .unwrap()
        .is_none());
    let both = app
        .read_models
        .users(&[id, other, UserId::new()])
        .await
        .unwrap();
    assert_eq!(both.len(), 2);
}

async fn the_live_feed_publishes_only_what_the_read_models_already_hold(app: &App) {
    let (room, users) = room_with(app, &["speaker"]).await;
    caught_up(&app.read_models).await;
    let mut feed = app.live.subscribe();
    for i in 0..30 {
        app.commands
            .send_message(room, users[0], "x", &format!("l{i}"), &meta())
            .await
            .unwrap();
    }
    let mut received = Vec::new();
    while received.len() < 30 {
        let batch = tokio::time::timeout(Duration::from_secs(10), feed.recv())
            .await
            .expect("live events within 10 s")
            .expect("feed open");
        for (event, _) in batch.iter() {
            if event.event_type != "MessageSent" {
                continue;
            }
            let seq = event.payload["MessageSent"]["seq"].as_i64().unwrap();
            // Whatever is live can be paged back already.
            let page = app
                .read_models
                .messages(
                    room,
                    PageRequest {
                        after: Some(seq - 1),
                        first: Some(1),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                seqs(&page),
                vec![seq as u64],
                "live seq {seq} not yet in the read model"
            );
            received.push(seq);
        }
    }
    assert_eq!(received, (1..=30).collect::<Vec<_>>());
}

/// The projector runs on a thread of its own, which no runtime shutdown ends: an app that is
/// dropped without `stop` must still end it (its session, and the projector lock it holds,
/// go away), or every such app would leave a projector running against its database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_dropped_without_stop_ends_its_projector() {
    let db = TestDb::new().await;
    let app = App::start(
        EventLog::postgres(PostgresLog::new(db.pool.clone())),
        "test-secret".into(),
        fast_config(),
    );
    support::eventually("the app's projector holds the projector lock", || {
        support::projector_active(&db.pool)
    })
    .await;
    drop(app);
    support::eventually("the dropped app's projector let go of the lock", || async {
        !support::projector_active(&db.pool).await
    })
    .await;
}
