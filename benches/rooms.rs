//! Finding rooms and messages at scale, for the README's "Measured": a fresh database of its
//! own (migrated like production, dropped afterwards) on the test server
//! (`PARLEY_TEST_DATABASE_URL`).
//!
//! `cargo bench --bench rooms` generates, in bulk with SQL, the read models of
//! `PARLEY_BENCH_MESSAGES` messages (default 1,000,000) in 1,000 public rooms (bodies of 8
//! words from a 5,000-word vocabulary, plus `hello` in one message of ten), a searcher who is
//! a member of 50 of the rooms and a heavy user who is a member of all 1,000; then p50/p99
//! over `PARLEY_BENCH_SAMPLES` (default 500) calls, through the read-model functions the API
//! calls, of:
//! 1. `search` for a rare word (in ~0.2% of messages) and for `hello`, against a plain
//!    `ILIKE '%…%'` scan of the same rooms' messages in the same run (the ratio; at most 40
//!    samples of the scan, which reads 50,000 rows each time), and the size of the GIN index;
//! 2. `rooms` (the rooms list) of the user in 1,000 rooms, and `publicRooms` pages (the
//!    first, and one 500 rooms deep by cursor), against a `SELECT 1` round trip.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use parley_domain::{RoomId, UserId};
use parley_projections::postgres::PgReadModels;
use parley_projections::ReadModelStore;
use sqlx::PgPool;
use support::TestDb;
use uuid::Uuid;

const ROOMS: i64 = 1_000;
const SEARCHER_ROOMS: i64 = 50;
const VOCABULARY: i64 = 5_000;

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

async fn uuid_of(pool: &PgPool, seed: &str) -> Uuid {
    sqlx::query_scalar("SELECT md5($1)::uuid")
        .bind(seed)
        .fetch_one(pool)
        .await
        .expect("md5 uuid")
}

async fn generate(pool: &PgPool, messages: i64) {
    let per_room = messages / ROOMS;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO users_view (user_id, username, password_hash, created_at, position)
         SELECT md5('u' || n)::uuid, 'user' || n, 'x', now(), n
           FROM generate_series(0, $1::bigint) AS n",
    )
    .bind(ROOMS)
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
    .bind(ROOMS)
    .bind(per_room)
    .execute(pool)
    .await
    .expect("rooms");
    // Each room: its host and the next 19 users; user 0 (the heavy user) is in every room;
    // the searcher (user 1) is in rooms 1..=50 (as host of room 1 and one of the 19 after).
    sqlx::query(
        "INSERT INTO room_members (room_id, user_id, state, position)
         SELECT md5('r' || r)::uuid, md5('u' || (1 + (r + k) % $1))::uuid, 'member', r
           FROM generate_series(1, $1::bigint) AS r, generate_series(0, 19) AS k
         UNION ALL
         SELECT md5('r' || r)::uuid, md5('u0')::uuid, 'member', r
           FROM generate_series(1, $1::bigint) AS r
         ON CONFLICT DO NOTHING",
    )
    .bind(ROOMS)
    .execute(pool)
    .await
    .expect("members");
    sqlx::query(
        "DELETE FROM room_members WHERE user_id = md5('u1')::uuid;
         ",
    )
    .execute(pool)
    .await
    .expect("searcher reset");
    sqlx::query(
        "INSERT INTO room_members (room_id, user_id, state, position)
         SELECT md5('r' || r)::uuid, md5('u1')::uuid, 'member', r
           FROM generate_series(1, $1::bigint) AS r",
    )
    .bind(SEARCHER_ROOMS)
    .execute(pool)
    .await
    .expect("searcher");
    let chunk = ROOMS / 10;
    let mut from = 1;
    while from <= ROOMS {
        let to = (from + chunk - 1).min(ROOMS);
        // Eight words from the vocabulary (random() runs anew in each call, on each row).
        let words = ["'w' || (1 + floor(random() * $5))::int"; 8].join(", ");
        sqlx::query(&format!(
            "INSERT INTO messages_view (room_id, seq, message_id, sender, body,
                                        client_msg_id, sent_at, position)
             SELECT md5('r' || r)::uuid, s, gen_random_uuid(),
                    md5('u' || (1 + (r + s % 20) % $3))::uuid,
                    concat_ws(' ', {words})
                        || CASE WHEN s % 10 = 0 THEN ' hello' ELSE '' END,
                    'c' || s, now(), (s - 1) * $3 + r
               FROM generate_series($1::bigint, $2::bigint) AS r,
                    generate_series(1, $4::bigint) AS s"
        ))
        .bind(from)
        .bind(to)
        .bind(ROOMS)
        .bind(per_room)
        .bind(VOCABULARY as f64)
        .execute(pool)
        .await
        .expect("messages");
        from = to + 1;
    }
    sqlx::query("VACUUM ANALYZE messages_view")
        .execute(pool)
        .await
        .expect("analyze");
    sqlx::query("ANALYZE").execute(pool).await.expect("analyze");
    println!(
        "generated {messages} messages in {ROOMS} rooms in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

async fn timed<F, Fut>(samples: i64, mut f: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed());
    }
    (percentile(&mut times, 0.50), percentile(&mut times, 0.99))
}

fn report(
    what: &str,
    (p50, p99): (Duration, Duration),
    baseline: Option<(&str, (Duration, Duration))>,
) {
    let mut line = format!(
        "  {what:<44} p50 {:>8.3} ms, p99 {:>8.3} ms",
        ms(p50),
        ms(p99)
    );
    if let Some((name, (b50, b99))) = baseline {
        line += &format!(
            "  ({name}: p50 {:.3} / p99 {:.3} ms; ratio {:.3} / {:.3})",
            ms(b50),
            ms(b99),
            ms(p50) / ms(b50),
            ms(p99) / ms(b99)
        );
    }
    println!("{line}");
}

/// The same rows `search` looks at, found the plain way: a scan of the searcher's rooms'
/// bodies for the word.
async fn ilike(pool: &PgPool, user: Uuid, word: &str) -> usize {
    sqlx::query(
        "SELECT room_id, seq FROM messages_view m
          WHERE m.room_id IN (SELECT room_id FROM room_members
                               WHERE user_id = $1 AND state = 'member')
            AND m.body ILIKE '%' || $2 || '%'
          ORDER BY m.position DESC LIMIT 20",
    )
    .bind(user)
    .bind(word)
    .fetch_all(pool)
    .await
    .expect("ilike")
    .len()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let messages = env_i64("PARLEY_BENCH_MESSAGES", 1_000_000);
    let samples = env_i64("PARLEY_BENCH_SAMPLES", 500);
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    generate(&pool, messages).await;
    let models = PgReadModels::new(pool.clone());
    let searcher = UserId(uuid_of(&pool, "u1").await);
    let heavy = UserId(uuid_of(&pool, "u0").await);
    let index: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_relation_size('messages_view_search'))")
            .fetch_one(&pool)
            .await
            .expect("index size");
    let table: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_relation_size('messages_view'))")
            .fetch_one(&pool)
            .await
            .expect("table size");
    println!("GIN index messages_view_search: {index} (messages_view heap: {table})");
    println!("{samples} samples each:");

    let select_1 = timed(samples, || async {
        sqlx::query("SELECT 1")
            .execute(&pool)
            .await
            .expect("select 1");
    })
    .await;
    report("SELECT 1", select_1, None);

    for (word, what) in [("w4242", "rare word"), ("hello", "common word (1 in 10)")] {
        let hits = models
            .search(searcher, word, None, 1_000)
            .await
            .expect("search")
            .len();
        let found = timed(samples, || async {
            models
                .search(searcher, word, None, 20)
                .await
                .expect("search");
        })
        .await;
        // The scan reads the 50 rooms' 50,000 rows every time: fewer samples.
        let scan = timed(samples.min(40), || async {
            ilike(&pool, searcher.0, word).await;
        })
        .await;
        report(
            &format!("search {what}, {hits} hits in 50 rooms"),
            found,
            Some(("ILIKE scan", scan)),
        );
    }

    let rooms = timed(samples, || async {
        let list = models.rooms_of(heavy).await.expect("rooms");
        assert_eq!(list.len(), ROOMS as usize);
    })
    .await;
    report(
        "rooms of a user in 1,000 rooms",
        rooms,
        Some(("SELECT 1", select_1)),
    );
    let first_page = timed(samples, || async {
        models.public_rooms(None, 20).await.expect("public rooms");
    })
    .await;
    report(
        "publicRooms, first page of 20",
        first_page,
        Some(("SELECT 1", select_1)),
    );
    let deep: Vec<RoomId> = models
        .public_rooms(None, 500)
        .await
        .expect("public rooms")
        .into_iter()
        .map(|room| room.id)
        .collect();
    let cursor = *deep.last().expect("500 rooms");
    let deep_page = timed(samples, || async {
        models
            .public_rooms(Some(cursor), 20)
            .await
            .expect("public rooms");
    })
    .await;
    report(
        "publicRooms, a page 500 rooms deep",
        deep_page,
        Some(("SELECT 1", select_1)),
    );
}
