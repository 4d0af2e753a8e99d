//! Shadow rebuilds under live traffic: reads keep answering, and the result equals a fresh
//! rebuild.

use super::*;

async fn index_names(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes
          WHERE tablename IN ('users_view', 'rooms_view', 'room_members', 'messages_view')
          ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("index names")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_rebuild_under_live_traffic_keeps_serving_and_ends_equal_to_a_fresh_rebuild() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(register(&app, &format!("user_{i}")).await);
    }
    let room = app
        .commands
        .create_room(users[0], "busy", users[1..3].to_vec(), &meta())
        .await
        .expect("room");
    for &user in &users[1..] {
        app.commands
            .join_room(room, user, &meta())
            .await
            .expect("join");
    }
    for i in 0..600 {
        app.commands
            .send_message(
                room,
                users[i % 4],
                &format!("before {i}"),
                &format!("b{i}"),
                &meta(),
            )
            .await
            .expect("send");
    }
    app.read_models
        .mark_read(room, users[1], MessageSeq(100))
        .await
        .expect("mark read");
    caught_up(&app.read_models).await;
    let indexes_before = index_names(&db.pool).await;

    let stop = Arc::new(AtomicBool::new(false));
    // Live traffic: messages, new users, new rooms with invitations, joins and leaves.
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let (bus, stop, users, sent) = (
            app.commands.clone(),
            stop.clone(),
            users.clone(),
            sent.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                bus.send_message(
                    room,
                    users[i % 4],
                    &format!("during {i}"),
                    &format!("d{i}"),
                    &meta(),
                )
                .await
                .expect("send during rebuild");
                sent.fetch_add(1, Ordering::Relaxed);
                if i % 50 == 0 {
                    let newcomer = bus
                        .register_user(&format!("newcomer_{i}"), "h".into(), &meta())
                        .await
                        .expect("register during rebuild");
                    let side = bus
                        .create_room(newcomer, "side", vec![users[0]], &meta())
                        .await
                        .expect("room during rebuild");
                    bus.join_room(side, users[0], &meta()).await.expect("join");
                    bus.leave_room(side, newcomer, &meta())
                        .await
                        .expect("leave");
                }
                i += 1;
            }
        })
    };
    // Readers: every query answers, and what they see never goes backwards.
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (models, stop, reads, users) = (
            app.read_models.clone(),
            stop.clone(),
            reads.clone(),
            users.clone(),
        );
        tokio::spawn(async move {
            let (mut last_seq, mut newest) = (MessageSeq::ZERO, 0);
            while !stop.load(Ordering::Relaxed) {
                let view = models
                    .room(room)
                    .await
                    .expect("room answers")
                    .expect("room exists");
                assert!(view.last_seq >= last_seq, "the room went back in time");
                last_seq = view.last_seq;
                assert_eq!(view.members.len(), 4);
                let page = models
                    .messages(room, PageRequest::default())
                    .await
                    .expect("history answers");
                let top = page.messages.last().map_or(0, |m| m.seq.0);
                assert!(top >= newest && top >= 600, "history went back: {top}");
                newest = top;
                let rooms = models.rooms_of(users[1]).await.expect("rooms list answers");
                assert!(rooms.iter().any(|r| r.room.id == room));
                assert!(models.user(users[2]).await.expect("user answers").is_some());
                assert!(models
                    .credentials("user_3")
                    .await
                    .expect("credentials answer")
                    .is_some());
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // Traffic is flowing and being read when the rebuild starts, and goes on after it.
    let flowing = |sent_at: u64, reads_at: u64| {
        let (sent, reads) = (sent.clone(), reads.clone());
        async move {
            sent.load(Ordering::Relaxed) >= sent_at + 50 && reads.load(Ordering::Relaxed) > reads_at
        }
    };
    support::eventually("traffic flows before the rebuild", || flowing(0, 0)).await;
    let phases = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = phases.clone();
    let models = PgReadModels::new(db.pool.clone());
    let reads_before = reads.load(Ordering::Relaxed);
    let report = models
        .rebuild(
            &[],
            &RebuildConfig {
                batch_size: 150,
                ..RebuildConfig::default()
            },
            &move |p: RebuildProgress| seen.lock().expect("lock").push(p),
        )
        .await
        .expect("rebuild");
    let reads_during = reads.load(Ordering::Relaxed) - reads_before;
    let (sent_after, reads_after) = (sent.load(Ordering::Relaxed), reads.load(Ordering::Relaxed));
    support::eventually("traffic flows after the rebuild", || {
        flowing(sent_after, reads_after)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    reader
        .await
        .expect("reader: reads failed or went backwards");
    assert!(reads_during > 0, "reads were answered during the rebuild");
    assert_eq!(
        report
            .projections
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        vec!["users", "rooms", "messages"]
    );
    assert!(report.events >= 600);
    let phases = phases.lock().expect("lock").clone();
    assert!(
        phases
            .iter()
            .filter(|p| p.phase == RebuildPhase::Replaying)
            .count()
            > 3
    );
    assert_eq!(phases.last().map(|p| p.phase), Some(RebuildPhase::Done));

    caught_up(&app.read_models).await;
    let swapped = dump_all(&db.pool).await;
    assert_eq!(
        index_names(&db.pool).await,
        indexes_before,
        "index names restored"
    );
    let shadows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE tablename LIKE '%\\_shadow' OR tablename LIKE '%\\_old'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("tables");
    assert_eq!(shadows, 0, "no shadow or old table is left");

    // A fresh rebuild from scratch (truncate and replay) gives the same read models.
    app.read_models.reset(&[]).await.expect("reset");
    caught_up(&app.read_models).await;
    assert_eq!(dump_all(&db.pool).await, swapped);

    // One rebuild at a time.
    let mut holder = db.pool.acquire().await.expect("connection");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(0x7061_726c_6579_7262_i64)
        .execute(&mut *holder)
        .await
        .expect("lock");
    assert!(matches!(
        app.read_models.rebuild(&["messages"], &|_| {}).await,
        Err(ReadModelError::RebuildRunning)
    ));
    app.stop().await;
}
