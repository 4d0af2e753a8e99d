//! Analyst-tool benchmarks against a real PostgreSQL, on two layouts of the same log size.
//!
//! `cargo bench --bench export` builds a log of N events (default 1,000,000;
//! `PARLEY_BENCH_EVENTS`) in each layout (`PARLEY_BENCH_LAYOUTS`, default `bulk,live`):
//! - `bulk`: users, rooms and messages inserted straight into `events` by a few set-based
//!   statements, then positioned and projected by the projector (rows in heap order = position
//!   order, one room after another in neat rounds). A fresh database, dropped afterwards.
//! - `live`: written the way a deployment writes it: through the command layer
//!   (`CommandBus::register_user`, `create_room`, `join_room`, `send_message`) by many
//!   concurrent writers over many rooms, with the projector running. This takes minutes at
//!   1M events, so the database is KEPT under a fixed name (`parley_bench_live_<N>_<schema
//!   hash>`) and reused by the next run if it holds the expected log; `PARLEY_BENCH_REBUILD=1`
//!   builds it again (do that after the write path changed).
//!
//! On each layout it prints:
//! 1. the ceiling: `psql -c "COPY (SELECT position, aggregate_type, …) TO STDOUT"` of the same
//!    rows and columns into a file, measured in the same run;
//! 2. `parley events export` (the release binary, as a child process writing to a file), JSONL
//!    and CSV: wall time, events/s, MB/s, peak RSS and the ratio to COPY (events/s);
//! 3. `parley projections rebuild` (all projections, shadow tables and swap): events/s, RSS;
//! 4. GraphQL `events` pages of 1,000 events over HTTP (an analyst's token) at random
//!    positions: p50/p99 against the same page read by a plain SQL statement in the same run;
//! 5. (bulk only) the cost of erasable message text: the JSONL export of the log as written
//!    (text beside each payload) against the same log with the text moved back inline (the
//!    layout before erasure existed), same bytes out;
//! 6. (bulk only) the JSONL export again after the stored JSON is rewritten in another form
//!    (as another tool might write it), which takes the re-serializing path.
//!
//! Export and COPY run twice each, alternating, and the faster run counts (the first warms the
//! caches); the machine is shared, so read the ratios, not the absolute times.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parley::app::{App, AppOptions, MIGRATOR};
use parley::commands::CommandMeta;
use parley::store::{EventLog, PostgresLog};
use parley::ws::WsConfig;
use parley_domain::{Role, RoomId, UserId};
use parley_projections::postgres::{PgEventLog, PgProjector, ProjectorConfig};
use parley_projections::LiveFeed;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use support::api::TestServer;
use support::TestDb;

fn events_wanted() -> i64 {
    std::env::var("PARLEY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn layouts_wanted() -> Vec<String> {
    std::env::var("PARLEY_BENCH_LAYOUTS")
        .unwrap_or_else(|_| "bulk,live".to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

const ROOMS: i64 = 100;

/// The analyst whose token reads the `events` pages (registered in both layouts).
const ANALYST: &str = "bench_analyst";

/// A database under test: its pool and URL (for child processes).
struct Db {
    name: String,
    pool: PgPool,
}

impl Db {
    fn url(&self) -> String {
        let admin = support::admin_url();
        let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
        let (server, _) = base.rsplit_once('/').expect("admin URL has a database");
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("{server}/{}{query}", self.name)
    }
}

/// Seeds `ROOMS` users (with password hashes, so redaction is exercised), `ROOMS` rooms and
/// messages spread over them up to `n` events in all, straight into the log; then the
/// projector positions and projects everything. The JSON is written as the server writes it
/// (serde_json: compact, keys sorted), so the export sees what it sees in production.
async fn seed_bulk(pool: &PgPool, n: i64) -> i64 {
    sqlx::query(
        r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
           SELECT 'User', u.id::text, 1, 'UserRegistered', '1.0',
                  format('{"UserRegistered":{"password_hash":%s,"registered_at":%s,"user_id":%s,"username":%s}}',
                         to_json('$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo'::text),
                         to_json('2026-11-20T00:00:00.123456789Z'::text), to_json(u.id::text),
                         to_json('user_' || u.n))::json,
                  format('{"request_id":%s,"timestamp":%s}',
                         to_json('seed-' || u.n), to_json('2026-11-20T00:00:00.123456789+00:00'::text))::json
             FROM (SELECT n, gen_random_uuid() AS id FROM generate_series(1, $1::bigint) AS n) AS u"#,
    )
    .bind(ROOMS)
    .execute(pool)
    .await
    .expect("seeding users");
    sqlx::query(
        r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
           SELECT 'Room', r.id::text, 1, 'RoomCreated', '1.0',
                  format('{"RoomCreated":{"created_at":%s,"host":%s,"name":%s,"room_id":%s}}',
                         to_json('2026-11-20T00:00:00.123456789Z'::text), to_json(r.host),
                         to_json('room of ' || r.host), to_json(r.id::text))::json,
                  format('{"actor":%s,"request_id":"seed","timestamp":%s}',
                         to_json(r.host), to_json('2026-11-20T00:00:00.123456789+00:00'::text))::json
             FROM (SELECT gen_random_uuid() AS id, aggregate_id AS host
                     FROM events WHERE event_type = 'UserRegistered') AS r"#,
    )
    .execute(pool)
    .await
    .expect("seeding rooms");
    let per_room = (n - 2 * ROOMS).max(0) / ROOMS;
    sqlx::query(
        r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, erasable)
           SELECT 'Room', r.aggregate_id, 1 + g, 'MessageSent', '1.0',
                  format('{"MessageSent":{"body":"","client_msg_id":%s,"message_id":%s,"sender":%s,"sent_at":%s,"seq":%s}}',
                         to_json('c' || g), to_json(gen_random_uuid()::text),
                         to_json(r.payload -> 'RoomCreated' ->> 'host'),
                         to_json('2026-11-20T00:00:00.123456789Z'::text), g)::json,
                  format('{"actor":%s,"request_id":%s,"timestamp":%s}',
                         to_json(r.payload -> 'RoomCreated' ->> 'host'), to_json('req-' || g),
                         to_json('2026-11-20T00:00:00.123456789+00:00'::text))::json,
                  'benchmark message number ' || g || ', with "some" words to make it typical'
             FROM events r, generate_series(1, $1::bigint) AS g
            WHERE r.event_type = 'RoomCreated'
            ORDER BY g, r.aggregate_id"#,
    )
    .bind(per_room)
    .execute(pool)
    .await
    .expect("seeding messages");
    sqlx::query("VACUUM ANALYZE events")
        .execute(pool)
        .await
        .expect("vacuum");

    let config = ProjectorConfig {
        batch_size: 5000,
        ..ProjectorConfig::default()
    };
    let projector = PgProjector::new(pool.clone(), LiveFeed::new(), config);
    let mut session = projector.try_activate().await.expect("db").expect("lock");
    let started = Instant::now();
    projector.drain(&mut session).await.expect("projecting");
    drop(session);
    // The analyst, through the command layer (its role is an event too).
    let app = App::start(
        EventLog::postgres(PostgresLog::new(pool.clone())),
        "bench-secret".into(),
        ProjectorConfig::default(),
    );
    register_analyst(&app).await;
    wait_projected(pool).await;
    app.stop().await;
    let total = positioned(pool).await;
    println!(
        "bulk layout: seeded and projected {total} events ({ROOMS} users, {ROOMS} rooms) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    sqlx::query("VACUUM ANALYZE")
        .execute(pool)
        .await
        .expect("vacuum");
    total
}

async fn register_analyst(app: &App) -> UserId {
    let meta = CommandMeta::system("bench-analyst");
    let analyst = app
        .commands
        .register_user(ANALYST, FAKE_HASH.to_owned(), &meta)
        .await
        .expect("registering the analyst");
    app.commands
        .grant_role(analyst, Role::Analyst, &meta)
        .await
        .expect("granting analyst");
    analyst
}

async fn positioned(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE position IS NOT NULL")
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Waits until every event is positioned and every projection has applied it.
async fn wait_projected(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM events WHERE position IS NULL)
                AND (SELECT coalesce(min(position), 0) FROM projector_checkpoints)
                    >= (SELECT coalesce(max(position), 0) FROM events)",
        )
        .fetch_one(pool)
        .await
        .expect("projector progress");
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "the projector did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Not a real argon2 hash (no one logs in with it): what a stored hash looks like.
const FAKE_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g";

const USERS: usize = 200;
const JOINS_PER_USER: usize = 5;
const WRITERS: usize = 32;

/// Message bodies of the kinds people send: short and long, quotes, newlines, emoji.
const BODIES: [&str; 8] = [
    "ok",
    "see you at 10",
    "Has anyone looked at the deploy logs from last night? Something \"odd\" in there.",
    "line one\nline two\n\tindented ✓",
    "🎉🎉 shipped! thanks all — great work on this one",
    "I think we should revisit the schema before the migration: the index on (room, seq) \
     covers the history page, but the search view scans. Thoughts? Also, the nightly job \
     timed out twice this week; I bumped the limit to 30 minutes for now.",
    "lunch?",
    "¿Qué tal? Ça va bien, merci. Größe: 42 — naïve café ☕",
];

/// The log as a deployment writes it: users register, open rooms and join some, then
/// `WRITERS` concurrent writers send messages as random members of random rooms until the
/// log holds about `n` events; the projector runs all along.
async fn write_live(pool: &PgPool, n: i64) -> i64 {
    let app = App::start_with(
        EventLog::postgres(PostgresLog::new(pool.clone())),
        "bench-secret".into(),
        AppOptions::local(ProjectorConfig::default()),
    );
    let started = Instant::now();
    register_analyst(&app).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let mut users = Vec::with_capacity(USERS);
    for i in 0..USERS {
        let meta = CommandMeta::system(format!("bench-register-{i}"));
        users.push(
            app.commands
                .register_user(&format!("user_{i}"), FAKE_HASH.to_owned(), &meta)
                .await
                .expect("registering"),
        );
    }
    let mut rooms: Vec<(RoomId, Vec<UserId>)> = Vec::with_capacity(ROOMS as usize);
    for i in 0..ROOMS as usize {
        let host = users[rng.random_range(0..users.len())];
        let meta = CommandMeta::new(Some(host), format!("bench-room-{i}"));
        let room = app
            .commands
            .create_room(host, &format!("room {i}"), Vec::new(), &meta)
            .await
            .expect("creating a room");
        rooms.push((room, vec![host]));
    }
    for (i, user) in users.iter().enumerate() {
        for j in 0..JOINS_PER_USER {
            let r = rng.random_range(0..rooms.len());
            if rooms[r].1.contains(user) {
                continue;
            }
            let meta = CommandMeta::new(Some(*user), format!("bench-join-{i}-{j}"));
            app.commands
                .join_room(rooms[r].0, *user, &meta)
                .await
                .expect("joining");
            rooms[r].1.push(*user);
        }
    }
    let setup: i64 = positioned(pool)
        .await
        .max(app.log.count().await.expect("count"));
    let messages = (n - setup).max(0) as u64;
    let rooms = Arc::new(rooms);
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let app = app.clone();
        let rooms = rooms.clone();
        let sent = sent.clone();
        let failed = failed.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + w as u64);
            loop {
                let i = sent.fetch_add(1, Ordering::Relaxed);
                if i >= messages {
                    return;
                }
                if i > 0 && i % (messages / 10).max(1) == 0 {
                    println!("  live layout: {i} of {messages} messages sent");
                }
                let (room, members) = &rooms[rng.random_range(0..rooms.len())];
                let sender = members[rng.random_range(0..members.len())];
                let body = BODIES[rng.random_range(0..BODIES.len())];
                let meta = CommandMeta::new(Some(sender), format!("req-{w}-{i}"));
                if let Err(error) = app
                    .commands
                    .send_message(*room, sender, body, &format!("c-{w}-{i}"), &meta)
                    .await
                {
                    // Conflicts after every retry are possible under this contention; the
                    // log simply holds one message fewer.
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("  a send failed: {error}");
                    }
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer task");
    }
    let written = started.elapsed();
    wait_projected(pool).await;
    app.stop().await;
    let total = positioned(pool).await;
    println!(
        "live layout: {total} events through the command layer ({USERS} users, {ROOMS} rooms, \
         {WRITERS} concurrent writers, {} failed sends) in {:.1} s ({:.0} events/s), projected \
         {:.1} s later",
        failed.load(Ordering::Relaxed),
        written.as_secs_f64(),
        total as f64 / written.as_secs_f64(),
        (started.elapsed() - written).as_secs_f64(),
    );
    sqlx::query("VACUUM ANALYZE")
        .execute(pool)
        .await
        .expect("vacuum");
    total
}

fn admin_options() -> PgConnectOptions {
    support::admin_url()
        .parse::<PgConnectOptions>()
        .expect("a valid admin URL")
        .disable_statement_logging()
}

async fn pool_on(name: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(40)
        .connect_with(admin_options().database(name))
        .await
        .unwrap_or_else(|e| panic!("connecting to {name}: {e}"))
}

/// The kept database of the live layout for `n` events: reused if complete, else built.
async fn live_db(n: i64) -> (Db, i64) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for migration in MIGRATOR.iter() {
        for byte in migration.checksum.iter() {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let name = format!("parley_bench_live_{n}_{:08x}", hash as u32);
    let rebuild = std::env::var("PARLEY_BENCH_REBUILD").is_ok_and(|v| v == "1");
    let mut admin = PgConnection::connect_with(&admin_options())
        .await
        .expect("PostgreSQL for the bench (see tests/support/mod.rs)");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .expect("pg_database");
    if exists && !rebuild {
        let pool = pool_on(&name).await;
        let total = positioned(&pool).await;
        // A complete build holds about `n` events (a few sends may have failed).
        if total >= n * 99 / 100 {
            println!(
                "live layout: reusing database {name} ({total} events; PARLEY_BENCH_REBUILD=1 \
                 writes it again)"
            );
            return (Db { name, pool }, total);
        }
        pool.close().await;
    }
    // Built under another name and renamed when complete, so a build cut short is never
    // reused.
    let building = format!("{name}_building");
    for db in [&name, &building] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .expect("dropping an old bench database");
    }
    sqlx::query(&format!("CREATE DATABASE {building}"))
        .execute(&mut admin)
        .await
        .expect("creating the bench database");
    let pool = pool_on(&building).await;
    MIGRATOR.run(&pool).await.expect("migrating");
    let total = write_live(&pool, n).await;
    pool.close().await;
    sqlx::query(&format!("ALTER DATABASE {building} RENAME TO {name}"))
        .execute(&mut admin)
        .await
        .expect("publishing the bench database");
    let _ = admin.close().await;
    (
        Db {
            pool: pool_on(&name).await,
            name,
        },
        total,
    )
}

/// What one child process took.
#[derive(Clone, Copy, Debug)]
struct Run {
    wall: Duration,
    /// Peak resident set size in kB (VmHWM), if it could be read.
    peak_rss_kb: Option<u64>,
}

/// Runs `command` to completion, sampling its peak RSS from `/proc/<pid>/status`.
fn measure(command: &mut Command) -> Run {
    let started = Instant::now();
    let mut child = command.spawn().expect("starting child");
    let status_file = PathBuf::from(format!("/proc/{}/status", child.id()));
    let mut peak = None;
    loop {
        if let Some(kb) = vm_hwm(&status_file) {
            peak = Some(kb);
        }
        if let Some(status) = child.try_wait().expect("waiting") {
            assert!(status.success(), "{command:?} failed: {status}");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Run {
        wall: started.elapsed(),
        peak_rss_kb: peak,
    }
}

fn vm_hwm(status: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn faster(a: Run, b: Run) -> Run {
    Run {
        wall: a.wall.min(b.wall),
        peak_rss_kb: a.peak_rss_kb.max(b.peak_rss_kb),
    }
}

fn parley(db: &Db) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
    command
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

fn rate(n: f64, wall: Duration) -> f64 {
    n / wall.as_secs_f64()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn rss(run: &Run) -> String {
    run.peak_rss_kb.map_or_else(
        || "n/a".to_owned(),
        |kb| format!("{:.1} MB", kb as f64 / 1024.0),
    )
}

fn count_lines(path: &Path) -> u64 {
    let bytes = std::fs::read(path).expect("reading the export");
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// The same rows and columns as an export reads (the payload with its erasable text apart,
/// as the export reads it: see the migration `erasable_text`).
const COPY_SQL: &str =
    "COPY (SELECT position, aggregate_type, aggregate_id, sequence, event_type, \
                        event_version, payload, metadata, recorded_at, erasable \
                        FROM events ORDER BY position) TO STDOUT";

fn copy_run(db: &Db, file: &Path) -> Run {
    let out = std::fs::File::create(file).expect("copy file");
    measure(
        Command::new("psql")
            .arg(db.url())
            .args(["-X", "-q", "-c", COPY_SQL])
            .stdin(Stdio::null())
            .stdout(out),
    )
}

fn export_run(db: &Db, format: &str, file: &Path) -> Run {
    measure(
        parley(db)
            .args(["events", "export", "--format", format, "--output"])
            .arg(file),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// GraphQL `events` pages of 1,000 at random positions, against the same rows read by one
/// plain SQL statement (JSON as text) in the same run.
async fn graphql_pages(db: &Db, total: i64, layout: &str) {
    const PAGES: usize = 200;
    let log = PgEventLog::new(db.pool.clone());
    let analyst = log
        .user_id(ANALYST)
        .await
        .expect("db")
        .expect("the analyst is in the log");
    let server = TestServer::on_log(
        EventLog::postgres(PostgresLog::new(db.pool.clone())),
        None,
        AppOptions::local(ProjectorConfig::default()),
        WsConfig::default(),
    )
    .await;
    let token = server.app.tokens.issue(analyst).expect("token");
    let query = "query($after: Int, $first: Int) { events(after: $after, first: $first) { \
                 hasMore events { position aggregateType aggregateId sequence eventType \
                 eventVersion payload metadata recordedAt } } }";
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let afters: Vec<i64> = (0..PAGES)
        .map(|_| rng.random_range(0..(total - 1000).max(1)))
        .collect();
    let mut api = Vec::with_capacity(PAGES);
    let mut sql = Vec::with_capacity(PAGES);
    for (i, after) in afters.iter().enumerate() {
        let started = Instant::now();
        let data = server
            .ok(
                Some(&token),
                query,
                json!({ "after": after, "first": 1000 }),
            )
            .await;
        let took = started.elapsed();
        assert_eq!(
            data["events"]["events"].as_array().map(Vec::len),
            Some(1000),
            "a full page"
        );
        let started = Instant::now();
        // All as text, as a client handing the rows on would read them.
        let rows = sqlx::query(
            "SELECT position, aggregate_type, aggregate_id, sequence, event_type, \
                 event_version, payload::text, metadata::text, recorded_at::text \
                 FROM events WHERE position > $1 ORDER BY position LIMIT 1001",
        )
        .bind(after)
        .fetch_all(&db.pool)
        .await
        .expect("the SQL page");
        let took_sql = started.elapsed();
        assert_eq!(rows.len(), 1001);
        // The first few warm the caches and the prepared statements.
        if i >= 10 {
            api.push(took);
            sql.push(took_sql);
        }
    }
    api.sort();
    sql.sort();
    println!(
        "[{layout}] GraphQL events, 1,000-event pages over HTTP ({} pages at random positions): \
         p50 {:.1} ms, p99 {:.1} ms; the same rows by one SQL statement: p50 {:.1} ms, p99 \
         {:.1} ms; ratio p99 {:.2}",
        api.len(),
        ms(percentile(&api, 0.5)),
        ms(percentile(&api, 0.99)),
        ms(percentile(&sql, 0.5)),
        ms(percentile(&sql, 0.99)),
        percentile(&api, 0.99).as_secs_f64() / percentile(&sql, 0.99).as_secs_f64(),
    );
    server.stop().await;
}

async fn measure_layout(db: &Db, total: i64, layout: &str, dir: &Path) {
    // The ceiling: the database writing the same rows and columns itself; alternated with
    // the export so both see the same machine.
    let copy_file = dir.join("copy.tsv");
    let file = dir.join("events.jsonl");
    let mut copy = copy_run(db, &copy_file);
    let mut jsonl = export_run(db, "jsonl", &file);
    copy = faster(copy, copy_run(db, &copy_file));
    jsonl = faster(jsonl, export_run(db, "jsonl", &file));
    let copy_bytes = std::fs::metadata(&copy_file).expect("copy output").len();
    assert_eq!(
        count_lines(&copy_file),
        total as u64,
        "COPY wrote every row"
    );
    let jsonl_bytes = std::fs::metadata(&file).expect("export output").len();
    assert_eq!(count_lines(&file), total as u64, "every event exported");
    std::fs::remove_file(&file).expect("cleanup");

    let csv_file = dir.join("events.csv");
    let csv = faster(
        export_run(db, "csv", &csv_file),
        export_run(db, "csv", &csv_file),
    );
    let csv_bytes = std::fs::metadata(&csv_file).expect("export output").len();
    std::fs::remove_file(&csv_file).expect("cleanup");
    std::fs::remove_file(&copy_file).expect("cleanup");

    println!("[{layout}] events: {total}");
    println!(
        "[{layout}] COPY (SELECT ... ORDER BY position) TO STDOUT via psql: {:.2} s, {:.0} events/s, {:.1} MB/s ({:.0} MB)",
        copy.wall.as_secs_f64(),
        rate(total as f64, copy.wall),
        rate(mb(copy_bytes), copy.wall),
        mb(copy_bytes)
    );
    for (format, run, bytes) in [("jsonl", jsonl, jsonl_bytes), ("csv", csv, csv_bytes)] {
        println!(
            "[{layout}] parley events export --format {format}: {:.2} s, {:.0} events/s, {:.1} MB/s ({:.0} MB), peak RSS {}, ratio to COPY {:.2}",
            run.wall.as_secs_f64(),
            rate(total as f64, run.wall),
            rate(mb(bytes), run.wall),
            mb(bytes),
            rss(&run),
            copy.wall.as_secs_f64() / run.wall.as_secs_f64(),
        );
    }

    // A full rebuild (all projections, shadow tables, swap) of the same log.
    let rebuild = measure(parley(db).args(["projections", "rebuild"]));
    println!(
        "[{layout}] parley projections rebuild (all, shadow + swap): {:.1} s, {:.0} events/s, peak RSS {}",
        rebuild.wall.as_secs_f64(),
        rate(total as f64, rebuild.wall),
        rss(&rebuild)
    );

    graphql_pages(db, total, layout).await;
}

/// The cost of erasable text: the same export on the same log with every message's text
/// moved back into its payload, the layout before erasure existed (changes the log: only on
/// the throw-away bulk database).
async fn text_inline(db: &Db, total: i64, dir: &Path) {
    let file = dir.join("events-erasable.jsonl");
    let erasable = faster(
        export_run(db, "jsonl", &file),
        export_run(db, "jsonl", &file),
    );
    sqlx::query(
        "UPDATE events SET payload = event_payload(payload, erasable), erasable = NULL
          WHERE erasable IS NOT NULL",
    )
    .execute(&db.pool)
    .await
    .expect("moving text inline");
    sqlx::query("VACUUM ANALYZE events")
        .execute(&db.pool)
        .await
        .expect("vacuum");
    let inline_file = dir.join("events-inline.jsonl");
    let inline = faster(
        export_run(db, "jsonl", &inline_file),
        export_run(db, "jsonl", &inline_file),
    );
    let same =
        std::fs::read(&file).expect("export") == std::fs::read(&inline_file).expect("export");
    assert!(same, "both layouts export the same bytes");
    std::fs::remove_file(&file).expect("cleanup");
    std::fs::remove_file(&inline_file).expect("cleanup");
    println!(
        "[bulk] parley events export --format jsonl, text erasable (beside the payload): {:.2} s, {:.0} events/s; \
         text inline (the layout before erasure): {:.2} s, {:.0} events/s; ratio {:.2}",
        erasable.wall.as_secs_f64(),
        rate(total as f64, erasable.wall),
        inline.wall.as_secs_f64(),
        rate(total as f64, inline.wall),
        inline.wall.as_secs_f64() / erasable.wall.as_secs_f64(),
    );
}

/// JSON written by other tools (spaces, another key order) is re-serialized on the way out
/// instead of copied: the slower path, measured on the same rows (changes the log: only on
/// the throw-away bulk database).
async fn other_writers(db: &Db, total: i64, dir: &Path) {
    sqlx::query(
        "UPDATE events SET payload = (payload::jsonb)::text::json,
                           metadata = (metadata::jsonb)::text::json",
    )
    .execute(&db.pool)
    .await
    .expect("rewriting the JSON");
    sqlx::query("VACUUM ANALYZE events")
        .execute(&db.pool)
        .await
        .expect("vacuum");
    let copy_file = dir.join("copy.tsv");
    let file = dir.join("events-other-writers.jsonl");
    let copy = faster(copy_run(db, &copy_file), copy_run(db, &copy_file));
    let run = faster(
        export_run(db, "jsonl", &file),
        export_run(db, "jsonl", &file),
    );
    let bytes = std::fs::metadata(&file).expect("export output").len();
    println!(
        "[bulk] parley events export --format jsonl, stored JSON not in canonical form: {:.2} s, {:.0} events/s, {:.1} MB/s, peak RSS {}, ratio to COPY {:.2}",
        run.wall.as_secs_f64(),
        rate(total as f64, run.wall),
        rate(mb(bytes), run.wall),
        rss(&run),
        copy.wall.as_secs_f64() / run.wall.as_secs_f64(),
    );
}

#[tokio::main]
async fn main() {
    let n = events_wanted();
    let dir = std::env::temp_dir().join(format!("parley-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    for layout in layouts_wanted() {
        match layout.as_str() {
            "bulk" => {
                let test_db = TestDb::new().await;
                let total = seed_bulk(&test_db.pool, n).await;
                let db = Db {
                    name: test_db.name.clone(),
                    pool: test_db.pool.clone(),
                };
                measure_layout(&db, total, "bulk", &dir).await;
                text_inline(&db, total, &dir).await;
                other_writers(&db, total, &dir).await;
            }
            "live" => {
                let (db, total) = live_db(n).await;
                measure_layout(&db, total, "live", &dir).await;
                db.pool.close().await;
            }
            other => panic!("unknown layout {other:?} (PARLEY_BENCH_LAYOUTS: bulk,live)"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
