//! Group commit against real PostgreSQL: commands that arrive together share one
//! transaction, a refused command fails alone, positions stay gap-free in commit order
//! across instances, and a writer whose connections die mid-batch answers truthfully.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parley::commands::{CommandBus, CommandError, CommandMeta};
use parley::store::{EventLog, PostgresLog};
use parley_domain::{RoomError, RoomId, UserId};
use sqlx::Connection;
use support::TestDb;

fn meta(actor: Option<UserId>) -> CommandMeta {
    CommandMeta::new(actor, format!("req-{}", uuid::Uuid::new_v4()))
}

fn bus(db: &TestDb) -> Arc<CommandBus> {
    Arc::new(CommandBus::new(EventLog::postgres(PostgresLog::new(
        db.pool.clone(),
    ))))
}

async fn register(bus: &CommandBus, username: &str) -> UserId {
    bus.register_user(username, "$argon2id$v=19$test-hash".to_owned(), &meta(None))
        .await
        .unwrap_or_else(|e| panic!("registering {username}: {e}"))
}

/// `rooms` rooms, each with a host and `members` joined users (the same users in every room).
async fn rooms_with_members(
    bus: &CommandBus,
    rooms: usize,
    members: usize,
) -> (Vec<RoomId>, Vec<UserId>) {
    let mut users = Vec::new();
    for i in 0..=members {
        users.push(register(bus, &format!("user_{i}")).await);
    }
    let mut ids = Vec::new();
    for r in 0..rooms {
        let room = bus
            .create_room(
                users[0],
                &format!("room {r}"),
                Vec::new(),
                &meta(Some(users[0])),
            )
            .await
            .expect("creating a room");
        for &user in &users[1..] {
            bus.join_room(room, user, &meta(Some(user)))
                .await
                .expect("joining");
        }
        ids.push(room);
    }
    (ids, users)
}

/// (transaction id, aggregate id, sequence, position, clientMsgId) of every stored message.
async fn stored_messages(db: &TestDb) -> Vec<(String, String, i64, i64, String)> {
    sqlx::query_as(
        "SELECT transaction_id::text, aggregate_id, sequence, position,
                payload -> 'MessageSent' ->> 'client_msg_id'
           FROM events WHERE event_type = 'MessageSent' ORDER BY position",
    )
    .fetch_all(&db.pool)
    .await
    .expect("reading the stored messages")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hundred_senders_into_one_room_share_few_transactions_and_get_seq_1_to_100() {
    let db = TestDb::new().await;
    let bus = bus(&db);
    let (rooms, users) = rooms_with_members(&bus, 1, 4).await;
    let room = rooms[0];
    let sends = (0..100).map(|i| {
        let bus = bus.clone();
        let sender = users[i % users.len()];
        tokio::spawn(async move {
            bus.send_message(room, sender, "hi", &format!("c{i}"), &meta(Some(sender)))
                .await
        })
    });
    let mut seqs = BTreeSet::new();
    for sent in futures::future::join_all(sends).await {
        seqs.insert(sent.expect("task").expect("every send succeeds").seq.0);
    }
    assert_eq!(seqs, (1..=100).collect::<BTreeSet<_>>());

    let stored = stored_messages(&db).await;
    assert_eq!(stored.len(), 100);
    let transactions: BTreeSet<&String> = stored.iter().map(|m| &m.0).collect();
    assert!(
        transactions.len() < 50,
        "100 concurrent sends to one room took {} transactions: no group commit",
        transactions.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_holding_refused_commands_commits_the_others() {
    let db = TestDb::new().await;
    let bus = bus(&db);
    let (rooms, users) = rooms_with_members(&bus, 1, 2).await;
    let room = rooms[0];
    let outsider = register(&bus, "outsider").await;
    // Interleaved, all at once: valid sends, sends by a non-member, blank bodies.
    let sends = (0..60).map(|i| {
        let bus = bus.clone();
        let (sender, body) = match i % 3 {
            0 => (users[i % users.len()], "fine"),
            1 => (outsider, "let me in"),
            _ => (users[0], "   "),
        };
        tokio::spawn(async move {
            let result = bus
                .send_message(room, sender, body, &format!("c{i}"), &meta(Some(sender)))
                .await;
            (i, result)
        })
    });
    let mut ok = BTreeSet::new();
    for joined in futures::future::join_all(sends).await {
        let (i, result) = joined.expect("task");
        match (i % 3, result) {
            (0, Ok(sent)) => {
                ok.insert(sent.seq.0);
            }
            (1, Err(CommandError::Rejected(RoomError::NotMember))) => {}
            (2, Err(CommandError::Rejected(RoomError::InvalidBody(_)))) => {}
            (kind, other) => panic!("send {i} (kind {kind}) answered {other:?}"),
        }
    }
    assert_eq!(
        ok,
        (1..=20).collect::<BTreeSet<_>>(),
        "every valid send committed"
    );
    let stored = stored_messages(&db).await;
    assert_eq!(stored.len(), 20, "nothing of a refused command was stored");
    assert!(
        stored.iter().all(|m| {
            let n: usize = m.4[1..].parse().expect("c<n>");
            n % 3 == 0
        }),
        "only the valid sends are stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn positions_are_gap_free_and_follow_each_rooms_order_across_two_instances() {
    let db = TestDb::new().await;
    let setup = bus(&db);
    let (rooms, users) = rooms_with_members(&setup, 5, 3).await;
    let instances = [bus(&db), bus(&db)];
    let sends = (0..400).map(|i| {
        let bus = instances[i % 2].clone();
        let room = rooms[(i / 2) % rooms.len()];
        let sender = users[i % users.len()];
        tokio::spawn(async move {
            bus.send_message(room, sender, "hi", &format!("c{i}"), &meta(Some(sender)))
                .await
        })
    });
    for sent in futures::future::join_all(sends).await {
        sent.expect("task").expect("no conflict reaches the caller");
    }
    let positions: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY position")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let n = positions.len() as i64;
    assert_eq!(
        positions,
        (1..=n).collect::<Vec<_>>(),
        "positions 1..{n}, no gap"
    );
    let head: i64 = sqlx::query_scalar("SELECT position FROM log_head")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(head, n);
    // Within an aggregate, commit order is sequence order.
    let mut last: HashMap<String, (i64, i64)> = HashMap::new();
    for (_, aggregate, sequence, position, _) in stored_messages(&db).await {
        if let Some((seq, pos)) = last.insert(aggregate.clone(), (sequence, position)) {
            assert!(
                sequence > seq && position > pos,
                "{aggregate}: sequence and position disagree"
            );
        }
    }
}

/// Ends every connection to the test database but the caller's, from another database.
async fn kill_connections(database: &str) -> u64 {
    let mut admin = sqlx::PgConnection::connect_with(&support::admin_options())
        .await
        .expect("an admin connection");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .expect("terminating backends");
    let _ = admin.close().await;
    killed.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_whose_connections_die_mid_batch_acks_exactly_what_it_stored() {
    let db = TestDb::new().await;
    let bus = bus(&db);
    let (rooms, users) = rooms_with_members(&bus, 4, 3).await;

    // 40 senders × 25 messages, some callers abandoning their request half-way, while every
    // connection of the database is killed again and again.
    let senders = (0..40).map(|s| {
        let bus = bus.clone();
        let room = rooms[s % rooms.len()];
        let sender = users[s % users.len()];
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for m in 0..25 {
                let id = format!("s{s}-m{m}");
                let meta = meta(Some(sender));
                let send = bus.send_message(room, sender, "hi", &id, &meta);
                if m % 7 == 3 {
                    // An abandoned request: it may or may not be stored, but at most once.
                    let _ = tokio::time::timeout(Duration::from_micros(300), send).await;
                    continue;
                }
                let answer = send.await;
                answers.push((id, answer));
            }
            answers
        })
    });
    let killer = {
        let stop = tokio_util::sync::CancellationToken::new();
        let db_name = db.name.clone();
        let guard = stop.clone();
        let task = tokio::spawn(async move {
            let mut killed = 0;
            while !stop.is_cancelled() {
                killed += kill_connections(&db_name).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            killed
        });
        (guard, task)
    };
    let answers: Vec<(String, Result<_, _>)> = futures::future::join_all(senders)
        .await
        .into_iter()
        .flat_map(|task| task.expect("sender task"))
        .collect();
    killer.0.cancel();
    let killed = killer.1.await.expect("killer task");
    assert!(killed > 0, "the test killed no connection");

    let stored = stored_messages(&db).await;
    let mut stored_by_id: HashMap<&str, usize> = HashMap::new();
    for m in &stored {
        *stored_by_id.entry(m.4.as_str()).or_default() += 1;
    }
    assert!(
        stored_by_id.values().all(|&n| n == 1),
        "a clientMsgId was stored twice"
    );
    let (mut acked, mut failed) = (0, 0);
    for (id, answer) in &answers {
        match answer {
            Ok(sent) => {
                acked += 1;
                assert_eq!(
                    stored_by_id.get(id.as_str()),
                    Some(&1),
                    "{id} acked but not stored"
                );
                assert!(sent.position > parley_projections::GlobalPosition::START);
            }
            Err(_) => {
                failed += 1;
                assert_eq!(
                    stored_by_id.get(id.as_str()),
                    None,
                    "{id} failed but was stored"
                );
            }
        }
    }
    assert!(acked > 0, "nothing was acknowledged");
    eprintln!("killed {killed} connections: {acked} acked, {failed} failed, all truthful");
    // Each room's seqs stay contiguous.
    for room in rooms {
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT (payload -> 'MessageSent' ->> 'seq')::bigint FROM events
              WHERE aggregate_id = $1 AND event_type = 'MessageSent' ORDER BY sequence",
        )
        .bind(room.to_string())
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_is_decided_on_the_current_state_not_on_a_stale_cache() {
    let db = TestDb::new().await;
    let (a, b) = (bus(&db), bus(&db));
    let host = register(&a, "host").await;
    let guest = register(&a, "guest").await;
    // A creates the room and caches it; B then changes it behind A's back.
    let room = a
        .create_room(host, "general", Vec::new(), &meta(Some(host)))
        .await
        .expect("creating a room");
    b.join_room(room, guest, &meta(Some(guest)))
        .await
        .expect("joining on B");
    // On A's cached state the guest is no member, so a leave there would be refused
    // ("not a member") without a look at the log.
    a.leave_room(room, guest, &meta(Some(guest)))
        .await
        .expect("the leave on A sees the join made on B");
    // And a refusal that is right stays a refusal.
    match a.leave_room(room, guest, &meta(Some(guest))).await {
        Err(CommandError::Rejected(_)) => {}
        other => panic!("a second leave is refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_is_not_starved_by_another_instance_writing_one_room_back_to_back() {
    let db = TestDb::new().await;
    let setup = bus(&db);
    let (rooms, users) = rooms_with_members(&setup, 1, 4).await;
    let room = rooms[0];
    let (a, b) = (bus(&db), bus(&db));
    // A: four senders, each sending as soon as the last was acked, so A's writer appends
    // back to back; B: one sender into the same room meanwhile.
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let a_senders: Vec<_> = (0..4)
        .map(|n| {
            let (a, busy, sender) = (a.clone(), busy.clone(), users[n]);
            tokio::spawn(async move {
                let mut i = 0;
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    a.send_message(room, sender, "a", &format!("a{n}-{i}"), &meta(Some(sender)))
                        .await
                        .expect("A's sends succeed");
                    i += 1;
                }
            })
        })
        .collect();
    let sender = users[4];
    for i in 0..100 {
        match b
            .send_message(room, sender, "b", &format!("b{i}"), &meta(Some(sender)))
            .await
        {
            Ok(_) => {}
            Err(error) => panic!("B's send {i} failed while A kept writing: {error:?}"),
        }
    }
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    for sender in a_senders {
        sender.await.expect("A's sender");
    }
    let from_b: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE payload->'MessageSent'->>'client_msg_id' LIKE 'b%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(from_b, 100, "every one of B's messages is stored once");
}
