//! Analyst-tool benchmarks against a real PostgreSQL (its own database, dropped afterwards).
//!
//! `cargo bench --bench export` prints, for N events (default 1,000,000;
//! `PARLEY_BENCH_EVENTS`):
//! 1. `parley events export --format jsonl` (the release binary, as a child process writing
//!    to a file): wall time, events/s, MB/s and peak RSS;
//! 2. the ceiling: `psql -c "COPY (SELECT …) TO STDOUT"` of the same rows and columns into a
//!    file, measured in the same run, and the ratio export / COPY (events/s);
//! 3. the same for `--format csv`;
//! 4. `parley projections rebuild` (all projections, shadow tables and swap) over the same
//!    log: wall time, events/s and peak RSS;
//! 5. the JSONL export again after the stored JSON is rewritten in another form (as another
//!    tool might write it), which takes the re-serializing path instead of the copying one.
//!
//! Each measurement runs twice and the faster run counts (the first warms the caches).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parley_projections::postgres::{PgProjector, ProjectorConfig};
use parley_projections::LiveFeed;
use support::TestDb;

fn events_wanted() -> i64 {
    std::env::var("PARLEY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

const ROOMS: i64 = 100;

/// Seeds `ROOMS` users (with password hashes, so redaction is exercised), `ROOMS` rooms and
/// messages spread over them up to `n` events in all, straight into the log; then the
/// projector positions and projects everything. The JSON is written as the server writes it
/// (serde_json: compact, keys sorted), so the export sees what it sees in production.
async fn seed(db: &TestDb, n: i64) -> i64 {
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
    .execute(&db.pool)
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
    .execute(&db.pool)
    .await
    .expect("seeding rooms");
    let per_room = (n - 2 * ROOMS).max(0) / ROOMS;
    sqlx::query(
        r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
           SELECT 'Room', r.aggregate_id, 1 + g, 'MessageSent', '1.0',
                  format('{"MessageSent":{"body":%s,"client_msg_id":%s,"message_id":%s,"sender":%s,"sent_at":%s,"seq":%s}}',
                         to_json('benchmark message number ' || g || ', with "some" words to make it typical'),
                         to_json('c' || g), to_json(gen_random_uuid()::text),
                         to_json(r.payload -> 'RoomCreated' ->> 'host'),
                         to_json('2026-11-20T00:00:00.123456789Z'::text), g)::json,
                  format('{"actor":%s,"request_id":%s,"timestamp":%s}',
                         to_json(r.payload -> 'RoomCreated' ->> 'host'), to_json('req-' || g),
                         to_json('2026-11-20T00:00:00.123456789+00:00'::text))::json
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

    let config = ProjectorConfig {
        batch_size: 5000,
        ..ProjectorConfig::default()
    };
    let projector = PgProjector::new(db.pool.clone(), LiveFeed::new(), config);
    let mut session = projector.try_activate().await.expect("db").expect("lock");
    let started = Instant::now();
    projector.drain(&mut session).await.expect("projecting");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE position IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    println!(
        "seeded and projected {total} events ({ROOMS} users, {ROOMS} rooms) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    sqlx::query("VACUUM ANALYZE")
        .execute(&db.pool)
        .await
        .expect("vacuum");
    total
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

fn best(mut f: impl FnMut() -> Run) -> Run {
    let first = f();
    let second = f();
    Run {
        wall: first.wall.min(second.wall),
        peak_rss_kb: first.peak_rss_kb.max(second.peak_rss_kb),
    }
}

fn parley(db: &TestDb) -> Command {
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

#[tokio::main]
async fn main() {
    let n = events_wanted();
    let db = TestDb::new().await;
    let total = seed(&db, n).await;
    let dir = std::env::temp_dir().join(format!("parley-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("bench dir");

    // The ceiling: the database writing the same rows and columns itself.
    let copy_file = dir.join("copy.tsv");
    let copy = best(|| {
        let out = std::fs::File::create(&copy_file).expect("copy file");
        measure(
            Command::new("psql")
                .arg(db.url())
                .args(["-X", "-q", "-c"])
                .arg(
                    "COPY (SELECT position, aggregate_type, aggregate_id, sequence, event_type, \
                     event_version, payload, metadata, recorded_at FROM events \
                     WHERE position IS NOT NULL ORDER BY position) TO STDOUT",
                )
                .stdin(Stdio::null())
                .stdout(out),
        )
    });
    let copy_bytes = std::fs::metadata(&copy_file).expect("copy output").len();
    assert_eq!(
        count_lines(&copy_file),
        total as u64,
        "COPY wrote every row"
    );

    let mut results = Vec::new();
    for format in ["jsonl", "csv"] {
        let file = dir.join(format!("events.{format}"));
        let run = best(|| {
            measure(
                parley(&db)
                    .args(["events", "export", "--format", format, "--output"])
                    .arg(&file),
            )
        });
        let bytes = std::fs::metadata(&file).expect("export output").len();
        let header = u64::from(format == "csv");
        assert_eq!(
            count_lines(&file),
            total as u64 + header,
            "every event exported"
        );
        results.push((format, run, bytes));
        std::fs::remove_file(&file).expect("cleanup");
    }

    println!("events: {total}");
    println!(
        "COPY (SELECT ...) TO STDOUT via psql: {:.2} s, {:.0} events/s, {:.1} MB/s ({:.0} MB)",
        copy.wall.as_secs_f64(),
        rate(total as f64, copy.wall),
        rate(mb(copy_bytes), copy.wall),
        mb(copy_bytes)
    );
    for (format, run, bytes) in &results {
        println!(
            "parley events export --format {format}: {:.2} s, {:.0} events/s, {:.1} MB/s ({:.0} MB), peak RSS {}, ratio to COPY {:.2}",
            run.wall.as_secs_f64(),
            rate(total as f64, run.wall),
            rate(mb(*bytes), run.wall),
            mb(*bytes),
            rss(run),
            rate(total as f64, run.wall) / rate(total as f64, copy.wall),
        );
    }

    // A full rebuild (all projections, shadow tables, swap) of the same log.
    let rebuild = measure(parley(&db).args(["projections", "rebuild"]));
    println!(
        "parley projections rebuild (all, shadow + swap): {:.1} s, {:.0} events/s, peak RSS {}",
        rebuild.wall.as_secs_f64(),
        rate(total as f64, rebuild.wall),
        rss(&rebuild)
    );

    // JSON written by other tools (spaces, another key order) is re-serialized on the way
    // out instead of copied: the slower path, measured on the same rows.
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
    let file = dir.join("events-other-writers.jsonl");
    let run = best(|| {
        measure(
            parley(&db)
                .args(["events", "export", "--output"])
                .arg(&file),
        )
    });
    let bytes = std::fs::metadata(&file).expect("export output").len();
    println!(
        "parley events export --format jsonl, stored JSON not in canonical form: {:.2} s, {:.0} events/s, {:.1} MB/s, peak RSS {}, ratio to COPY {:.2}",
        run.wall.as_secs_f64(),
        rate(total as f64, run.wall),
        rate(mb(bytes), run.wall),
        rss(&run),
        rate(total as f64, run.wall) / rate(total as f64, copy.wall),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
