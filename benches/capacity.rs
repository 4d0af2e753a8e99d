//! What one PostgreSQL takes, for `docs/scaling.md`: a fresh database of its own (migrated
//! like production, dropped afterwards) on the test server (`PARLEY_TEST_DATABASE_URL`).
//!
//! `cargo bench --bench capacity` prints:
//! 1. appends: `MessageSent`-shaped rows into the real `events` table (all its indexes and
//!    its trigger), in multi-row transactions of growing batch size, from 1 and from 4
//!    connections; events/s and the ratio to one event per transaction (the baseline);
//! 2. read-model queries at scale: the read models of `PARLEY_BENCH_EVENTS` events
//!    (default 10,000,000 messages over 10,000 rooms, 10,000 users, 20 members per room)
//!    plus the same number of rows in `events`, generated in bulk with SQL; then p50/p99 of
//!    the history page (latest and a middle page) and of the rooms list, against a
//!    `SELECT 1` round trip measured in the same run.
//!
//! Knobs: `PARLEY_BENCH_PARTS` (`appends,queries`), `PARLEY_BENCH_EVENTS`, `PARLEY_BENCH_APPENDS` (events per batch size, 20,000),
//! `PARLEY_BENCH_SAMPLES` (queries per kind, 2,000). Heavy: run with `nice`, and mind disk
//! (about 1 GB per million events).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::PgPool;
use support::TestDb;

fn env_i64(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    let n = samples.len();
    samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Appends `total` MessageSent events for `room` (sequence from 2 on) in transactions of
/// `batch` events, each one multi-row INSERT.
async fn append(pool: PgPool, room: uuid::Uuid, total: i64, batch: i64) {
    let sender = uuid::Uuid::new_v4();
    let mut seq = 1i64;
    while seq <= total {
        let n = batch.min(total - seq + 1);
        let mut ids = Vec::with_capacity(n as usize);
        let mut sequences = Vec::with_capacity(n as usize);
        let mut payloads = Vec::with_capacity(n as usize);
        for s in seq..seq + n {
            ids.push(room.to_string());
            sequences.push(s + 1);
            payloads.push(
                serde_json::json!({ "MessageSent": {
                    "message_id": uuid::Uuid::new_v4(), "seq": s, "sender": sender,
                    "body": "a message of about the usual length, say sixty characters",
                    "client_msg_id": format!("c{s}"), "sent_at": "2026-12-01T00:00:00Z",
                }})
                .to_string(),
            );
        }
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             SELECT 'Room', a, s, 'MessageSent', '1.0', p::json,
                    '{\"actor\":\"bench\",\"request_id\":\"capacity\"}'
               FROM unnest($1::text[], $2::bigint[], $3::text[]) AS t(a, s, p)",
        )
        .bind(&ids)
        .bind(&sequences)
        .bind(&payloads)
        .execute(&mut *tx)
        .await
        .expect("append");
        tx.commit().await.expect("commit");
        seq += n;
    }
}

async fn appends(db: &TestDb) {
    let per_size = env_i64("PARLEY_BENCH_APPENDS", 20_000);
    println!("appends: {per_size} MessageSent events per run into `events` (indexes, trigger)");
    let mut baseline = [0.0f64; 2];
    for batch in [1i64, 10, 100, 1_000] {
        for (slot, writers) in [1i64, 4].into_iter().enumerate() {
            // Fewer single-event transactions: they are the slow baseline.
            let total = if batch == 1 { per_size / 4 } else { per_size };
            let started = Instant::now();
            let tasks: Vec<_> = (0..writers)
                .map(|_| {
                    tokio::spawn(append(
                        db.pool.clone(),
                        uuid::Uuid::new_v4(),
                        total / writers,
                        batch,
                    ))
                })
                .collect();
            for task in tasks {
                task.await.expect("writer");
            }
            let rate = (total / writers * writers) as f64 / started.elapsed().as_secs_f64();
            if batch == 1 {
                baseline[slot] = rate;
            }
            println!(
                "  batch {batch:>5}, {writers} connection(s): {rate:>9.0} events/s ({:.1}x one event per transaction)",
                rate / baseline[slot]
            );
        }
    }
}

async fn generate(pool: &PgPool, events: i64) {
    let rooms = (events / 1_000).max(1);
    let users = rooms;
    let per_room = events / rooms;
    let started = Instant::now();
    let step = |what: &str, t: Instant| {
        println!("  generated {what} in {:.1} s", t.elapsed().as_secs_f64());
    };
    let t = Instant::now();
    sqlx::query(
        "INSERT INTO users_view (user_id, username, password_hash, created_at, position)
         SELECT md5('u' || n)::uuid, 'user' || n, 'x', now(), n
           FROM generate_series(1, $1::bigint) AS n",
    )
    .bind(users)
    .execute(pool)
    .await
    .expect("users");
    sqlx::query(
        "INSERT INTO rooms_view (room_id, name, host, created_at, last_seq,
                                 last_activity_position, position)
         SELECT md5('r' || n)::uuid, 'room ' || n, md5('u' || n)::uuid, now(), $2,
                ($2 - 1) * $1 + n, n
           FROM generate_series(1, $1::bigint) AS n",
    )
    .bind(rooms)
    .bind(per_room)
    .execute(pool)
    .await
    .expect("rooms");
    // 20 members per room: room r has users r, r+1, …, r+19 (mod users).
    sqlx::query(
        "INSERT INTO room_members (room_id, user_id, state, position)
         SELECT md5('r' || r)::uuid, md5('u' || (1 + (r + k) % $1))::uuid, 'member', r
           FROM generate_series(1, $1::bigint) AS r, generate_series(0, 19) AS k",
    )
    .bind(rooms)
    .execute(pool)
    .await
    .expect("members");
    sqlx::query(
        "INSERT INTO read_cursors (room_id, user_id, last_read_seq)
         SELECT room_id, user_id, $1 / 2 FROM room_members",
    )
    .bind(per_room)
    .execute(pool)
    .await
    .expect("cursors");
    step("users, rooms, members", t);
    // Messages and events in chunks of rooms (one statement each).
    let chunk = (rooms / 10).max(1);
    let mut from = 1;
    while from <= rooms {
        let to = (from + chunk - 1).min(rooms);
        let t = Instant::now();
        sqlx::query(
            "INSERT INTO messages_view (room_id, seq, message_id, sender, body,
                                        client_msg_id, sent_at, position)
             SELECT md5('r' || r)::uuid, s, gen_random_uuid(),
                    md5('u' || (1 + (r + s % 20) % $3))::uuid,
                    'a message of about the usual length, number ' || s, 'c' || s,
                    now(), (s - 1) * $3 + r
               FROM generate_series($1::bigint, $2::bigint) AS r,
                    generate_series(1, $4::bigint) AS s",
        )
        .bind(from)
        .bind(to)
        .bind(rooms)
        .bind(per_room)
        .execute(pool)
        .await
        .expect("messages");
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata, position)
             SELECT 'Room', md5('r' || r)::uuid::text, s + 1, 'MessageSent', '1.0',
                    json_build_object('MessageSent', json_build_object(
                        'message_id', gen_random_uuid(), 'seq', s,
                        'sender', md5('u' || (1 + (r + s % 20) % $3))::uuid,
                        'body', 'a message of about the usual length, number ' || s,
                        'client_msg_id', 'c' || s, 'sent_at', '2026-12-01T00:00:00Z')),
                    '{\"actor\":\"bench\",\"request_id\":\"seed\"}', (s - 1) * $3 + r
               FROM generate_series($1::bigint, $2::bigint) AS r,
                    generate_series(1, $4::bigint) AS s",
        )
        .bind(from)
        .bind(to)
        .bind(rooms)
        .bind(per_room)
        .execute(pool)
        .await
        .expect("events");
        step(&format!("rooms {from}..={to}: messages and events"), t);
        from = to + 1;
    }
    sqlx::query("ANALYZE").execute(pool).await.expect("analyze");
    println!(
        "  {events} events, {rooms} rooms, {users} users in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

async fn timed<F, Fut>(samples: i64, mut f: F) -> (Duration, Duration)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut rng = rand::rng();
    let mut times = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        let pick = rng.random::<u64>();
        let t = Instant::now();
        f(pick).await;
        times.push(t.elapsed());
    }
    (percentile(&mut times, 0.50), percentile(&mut times, 0.99))
}

async fn queries(db: &TestDb, events: i64) {
    let pool = &db.pool;
    let rooms = (events / 1_000).max(1) as u64;
    let per_room = events / rooms as i64;
    let samples = env_i64("PARLEY_BENCH_SAMPLES", 2_000);
    let size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
            .fetch_one(pool)
            .await
            .expect("size");
    println!("read-model queries at {events} events (database {size}), {samples} samples each:");
    let (b50, b99) = timed(samples, |_| async {
        sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .expect("select 1");
    })
    .await;
    println!(
        "  baseline SELECT 1:        p50 {:.3} ms, p99 {:.3} ms",
        ms(b50),
        ms(b99)
    );
    let history = |before: i64| {
        move |pick: u64| async move {
            let room = format!("r{}", 1 + pick % rooms);
            let before = if before < 0 { i64::MAX } else { before };
            let rows = sqlx::query(
                "SELECT room_id, seq, message_id, sender, body, client_msg_id, sent_at, position
                   FROM messages_view
                  WHERE room_id = md5($1)::uuid AND seq > 0 AND seq < $2
                  ORDER BY seq DESC LIMIT 51",
            )
            .bind(room)
            .bind(before)
            .fetch_all(pool)
            .await
            .expect("history");
            assert_eq!(rows.len(), 51);
        }
    };
    let (h50, h99) = timed(samples, history(-1)).await;
    println!(
        "  history, latest page:     p50 {:.3} ms, p99 {:.3} ms ({:.1}x / {:.1}x SELECT 1)",
        ms(h50),
        ms(h99),
        ms(h50) / ms(b50),
        ms(h99) / ms(b99)
    );
    let (m50, m99) = timed(samples, history(per_room / 2)).await;
    println!(
        "  history, a middle page:   p50 {:.3} ms, p99 {:.3} ms ({:.1}x / {:.1}x SELECT 1)",
        ms(m50),
        ms(m99),
        ms(m50) / ms(b50),
        ms(m99) / ms(b99)
    );
    let (r50, r99) = timed(samples, |pick| async move {
        let user = format!("u{}", 1 + pick % rooms);
        let rows = sqlx::query(
            "SELECT r.room_id, r.name, r.host, r.created_at, r.last_seq, r.last_activity_position,
                    greatest(r.last_seq - coalesce(c.last_read_seq, 0), 0) AS unread,
                    m.seq, m.message_id, m.sender, m.body, m.client_msg_id, m.sent_at, m.position
               FROM room_members rm
               JOIN rooms_view r ON r.room_id = rm.room_id
               LEFT JOIN messages_view m ON m.room_id = r.room_id AND m.seq = r.last_seq
               LEFT JOIN read_cursors c ON c.room_id = rm.room_id AND c.user_id = rm.user_id
              WHERE rm.user_id = md5($1)::uuid AND rm.state = 'member'
              ORDER BY r.last_activity_position DESC, r.room_id",
        )
        .bind(user)
        .fetch_all(pool)
        .await
        .expect("rooms list");
        assert_eq!(rows.len(), 20);
    })
    .await;
    println!(
        "  rooms list (20 rooms):    p50 {:.3} ms, p99 {:.3} ms ({:.1}x / {:.1}x SELECT 1)",
        ms(r50),
        ms(r99),
        ms(r50) / ms(b50),
        ms(r99) / ms(b99)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = env_i64("PARLEY_BENCH_EVENTS", 10_000_000);
    let parts = std::env::var("PARLEY_BENCH_PARTS").unwrap_or_else(|_| "appends,queries".into());
    if parts.contains("appends") {
        let db = TestDb::new().await;
        appends(&db).await;
    }
    if !parts.contains("queries") {
        return;
    }
    let db = TestDb::new().await;
    println!("generating the read models of {events} events (and as many `events` rows):");
    generate(&db.pool, events).await;
    queries(&db, events).await;
}
