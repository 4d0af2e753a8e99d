//! Projector benchmarks against a real PostgreSQL (its own database, dropped afterwards).
//!
//! `cargo bench --bench projector` prints:
//! 1. replay throughput: the projector rebuilding the read models from N positioned
//!    `MessageSent` events (default 1,000,000; `PARLEY_BENCH_EVENTS`), against the ceiling
//!    of a plain `INSERT … SELECT` of the same rows into a table shaped like
//!    `messages_view`, measured in the same run, and their ratio;
//! 2. first-time sequencing throughput (stamping positions + projecting);
//! 3. commit-to-read-model lag (p50/p99) under a steady 1,000 messages/s.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use parley::app::App;
use parley::commands::CommandMeta;
use parley::store::{EventLog, PostgresLog};
use parley_projections::postgres::{PgProjector, PgReadModels, ProjectorConfig};
use parley_projections::LiveFeed;
use parley_projections::ReadModelStore;
use support::TestDb;

fn events_wanted() -> i64 {
    std::env::var("PARLEY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

const ROOMS: i64 = 100;

/// Seeds `ROOMS` rooms and `n` messages spread over them, written straight into the log.
async fn seed(db: &TestDb, n: i64) {
    sqlx::query(
        r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
           SELECT 'Room', r.id::text, 1, 'RoomCreated', '1.0',
                  json_build_object('RoomCreated', json_build_object(
                      'room_id', r.id, 'name', 'room ' || r.n, 'host', r.host,
                      'created_at', '2026-11-20T00:00:00Z')), '{}'
             FROM (SELECT n, gen_random_uuid() AS id, gen_random_uuid() AS host
                     FROM generate_series(1, $1::bigint) AS n) AS r"#,
    )
    .bind(ROOMS)
    .execute(&db.pool)
    .await
    .expect("seeding rooms");
    let per_room = n / ROOMS;
    sqlx::query(
        r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
           SELECT 'Room', r.aggregate_id, 1 + g, 'MessageSent', '1.0',
                  json_build_object('MessageSent', json_build_object(
                      'message_id', gen_random_uuid(), 'seq', g,
                      'sender', r.payload -> 'RoomCreated' ->> 'host',
                      'body', 'benchmark message number ' || g, 'client_msg_id', 'c' || g,
                      'sent_at', '2026-11-20T00:00:00Z')),
                  '{"actor":"bench","request_id":"seed"}'
             FROM events r, generate_series(1, $1::bigint) AS g
            WHERE r.event_type = 'RoomCreated'
            ORDER BY g, r.aggregate_id"#,
    )
    .bind(per_room)
    .execute(&db.pool)
    .await
    .expect("seeding messages");
    sqlx::query("VACUUM ANALYZE events")
        .execute(&db.pool)
        .await
        .expect("vacuum");
}

fn rate(n: i64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

async fn throughput(db: &TestDb, n: i64) {
    let config = ProjectorConfig {
        batch_size: 5000,
        ..ProjectorConfig::default()
    };
    let projector = PgProjector::new(db.pool.clone(), LiveFeed::new(), config);
    let mut session = projector.try_activate().await.expect("db").expect("lock");

    let started = Instant::now();
    projector.drain(&mut session).await.expect("sequencing");
    let sequenced = started.elapsed();

    // Replay: the read models rebuilt from the positioned log.
    let models = PgReadModels::new(db.pool.clone());
    models.reset(&[]).await.expect("reset");
    sqlx::query("VACUUM ANALYZE")
        .execute(&db.pool)
        .await
        .expect("vacuum");
    let started = Instant::now();
    projector.drain(&mut session).await.expect("replay");
    let replayed = started.elapsed();

    // The ceiling: the same rows copied by the database alone.
    sqlx::query("CREATE TABLE messages_ceiling (LIKE messages_view INCLUDING ALL)")
        .execute(&db.pool)
        .await
        .expect("ceiling table");
    let started = Instant::now();
    sqlx::query(
        // The payload is parsed once per row (json_to_record), the fastest way the database
        // itself has to do this copy: a strict ceiling.
        "INSERT INTO messages_ceiling (room_id, seq, message_id, sender, body, client_msg_id, sent_at, position)
         SELECT e.aggregate_id::uuid, m.seq, m.message_id, m.sender, m.body, m.client_msg_id, m.sent_at, e.position
           FROM events e,
                json_to_record(e.payload -> 'MessageSent') AS m(message_id uuid, seq bigint, sender uuid,
                                                                 body text, client_msg_id text, sent_at timestamptz)
          WHERE e.event_type = 'MessageSent' ORDER BY e.position",
    )
    .execute(&db.pool)
    .await
    .expect("ceiling insert");
    let ceiling = started.elapsed();

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM messages_view")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(count, n, "every message projected");
    println!("events: {} ({} rooms)", n + ROOMS, ROOMS);
    println!(
        "first sequencing + projection: {:.1} s, {:.0} events/s",
        sequenced.as_secs_f64(),
        rate(n + ROOMS, sequenced)
    );
    println!(
        "replay (rebuild all read models): {:.1} s, {:.0} events/s",
        replayed.as_secs_f64(),
        rate(n + ROOMS, replayed)
    );
    println!(
        "ceiling (INSERT ... SELECT into messages table): {:.1} s, {:.0} rows/s",
        ceiling.as_secs_f64(),
        rate(n, ceiling)
    );
    println!(
        "ratio replay / ceiling: {:.2}",
        rate(n + ROOMS, replayed) / rate(n, ceiling)
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

async fn lag(db: &TestDb) {
    let app = App::start(
        EventLog::postgres(PostgresLog::new(db.pool.clone())),
        "bench-secret".into(),
        ProjectorConfig::default(),
    );
    let meta = CommandMeta::system("bench");
    let mut rooms = Vec::new();
    for i in 0..10 {
        let host = app
            .commands
            .register_user(&format!("lag_host_{i}"), "h".into(), &meta)
            .await
            .expect("user");
        rooms.push((
            app.commands
                .create_room(host, "lag", Vec::new(), &meta)
                .await
                .expect("room"),
            host,
        ));
    }
    let mut feed = app.live.subscribe();
    let total = 10_000usize;
    let committed = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let writer = {
        let app = app.clone();
        let committed = committed.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sends = Vec::new();
            for i in 0..total {
                tick.tick().await;
                let (room, host) = rooms[i % rooms.len()];
                let app = app.clone();
                let committed = committed.clone();
                sends.push(tokio::spawn(async move {
                    let sent = app
                        .commands
                        .send_message(
                            room,
                            host,
                            "lag probe",
                            &format!("p{i}"),
                            &CommandMeta::system("bench"),
                        )
                        .await
                        .expect("send");
                    committed
                        .lock()
                        .expect("lock")
                        .insert(sent.message_id.0, Instant::now());
                }));
            }
            for send in sends {
                send.await.expect("send task");
            }
        })
    };
    let started = Instant::now();
    let mut seen = Vec::with_capacity(total);
    while seen.len() < total {
        let batch = feed.recv().await.expect("live feed");
        let now = Instant::now();
        for (event, _) in batch.iter() {
            if event.event_type == "MessageSent" {
                let id = event.payload["MessageSent"]["message_id"]
                    .as_str()
                    .expect("id")
                    .to_owned();
                seen.push((id, now));
            }
        }
    }
    let elapsed = started.elapsed();
    writer.await.expect("writer");
    let committed = std::mem::take(&mut *committed.lock().expect("lock"));
    let mut lags: Vec<Duration> = seen
        .iter()
        .filter_map(|(id, at)| {
            let id = uuid::Uuid::parse_str(id).ok()?;
            // A message can be live a hair before its sender's task records the return.
            committed.get(&id).map(|c| at.saturating_duration_since(*c))
        })
        .collect();
    lags.sort();
    println!(
        "lag commit -> read model at {:.0} msg/s over {} messages: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        rate(total as i64, elapsed),
        lags.len(),
        percentile(&lags, 0.50).as_secs_f64() * 1e3,
        percentile(&lags, 0.99).as_secs_f64() * 1e3,
        lags.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    app.stop().await;
}

#[tokio::main]
async fn main() {
    let n = events_wanted();
    {
        let db = TestDb::new().await;
        seed(&db, n).await;
        throughput(&db, n / ROOMS * ROOMS).await;
    }
    {
        let db = TestDb::new().await;
        lag(&db).await;
    }
}
