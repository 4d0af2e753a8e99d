//! The event log for analysts, against real stores and the real binary: exports (content,
//! reproducibility, filters, concurrent writers), the `events` page query, time travel
//! (`room_at`, `messages_at`) at every position of a scripted history, upcasting of an old
//! event, shadow rebuilds under live traffic, and the administrative commands.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use cqrs_es::persist::SerializedEvent;
use cqrs_es::EventStore;
use parley::app::App;
use parley::commands::CommandMeta;
use parley::store::{AggregateStore, EventLog, PostgresLog};
use parley_domain::{MessageSeq, Role, Room, RoomId, UserId};
use parley_projections::postgres::{
    PgReadModels, ProjectorConfig, RebuildConfig, RebuildPhase, RebuildProgress,
};
use parley_projections::{
    EventFilter, FilterError, GlobalPosition, PageRequest, ReadModelError, ReadModels,
};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use support::checksums::dump_all;
use support::TestDb;

fn meta() -> CommandMeta {
    CommandMeta::system("test")
}

fn fast_config() -> ProjectorConfig {
    ProjectorConfig {
        batch_size: 500,
        poll_interval: Duration::from_millis(50),
        standby_retry: Duration::from_millis(100),
        ..ProjectorConfig::default()
    }
}

/// The argon2 hash every test user registers with; it must never appear in analyst output.
const SECRET_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2VjcmV0c2FsdA$secret-hash-value";

/// Waits until every projection has applied every committed event; returns the head.
async fn caught_up(models: &ReadModels) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = models.status().await.expect("projection status");
        if status.iter().all(|s| s.lag_events == 0) {
            return status.iter().map(|s| s.checkpoint.0).max().unwrap_or(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projections did not catch up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn postgres_app(db: &TestDb) -> App {
    App::start(
        EventLog::Postgres(PostgresLog::new(db.pool.clone())),
        "test-secret".into(),
        fast_config(),
    )
}

async fn register(app: &App, name: &str) -> UserId {
    app.commands
        .register_user(name, SECRET_HASH.into(), &meta())
        .await
        .expect("register")
}

// ---- The binary ---------------------------------------------------------------------------

fn parley(db: &TestDb) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
    for var in ["REDIS_URL", "PARLEY_JWT_SECRET", "PARLEY_BIND"] {
        command.env_remove(var);
    }
    command
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("running parley")
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs `parley events export ARGS` to stdout and returns the bytes (asserting success).
fn export(db: &TestDb, args: &[&str]) -> Vec<u8> {
    let output = run(parley(db).args(["events", "export"]).args(args));
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {:?}",
        stderr_lines(&output)
    );
    assert!(
        output.stderr.is_empty(),
        "a non-interactive export is quiet on stderr: {:?}",
        stderr_lines(&output)
    );
    output.stdout
}

fn lines(jsonl: &[u8]) -> Vec<Value> {
    String::from_utf8(jsonl.to_vec())
        .expect("utf-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect()
}

fn positions_of(lines: &[Value]) -> Vec<i64> {
    lines
        .iter()
        .map(|l| l["position"].as_i64().expect("position"))
        .collect()
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("parley-analyst-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("reading scratch dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- A store with some history ------------------------------------------------------------

/// What `seed_history` built.
struct History {
    ann: UserId,
    room: RoomId,
    other_room: RoomId,
}

/// A little of everything through the command layer, then `bulk` messages written straight
/// into the log (so exports span several pages).
async fn seed_history(app: &App, db: &TestDb, bulk: i64) -> History {
    let ann = register(app, "ann").await;
    let bob = register(app, "bob").await;
    app.commands
        .grant_role(ann, Role::Analyst, &meta())
        .await
        .expect("grant");
    let room = app
        .commands
        .create_room(ann, "analysis", vec![bob], &meta())
        .await
        .expect("room");
    app.commands
        .join_room(room, bob, &meta())
        .await
        .expect("join");
    let other_room = app
        .commands
        .create_room(bob, "elsewhere", Vec::new(), &meta())
        .await
        .expect("room");
    for i in 0..20 {
        let (target, sender) = if i % 3 == 0 {
            (other_room, bob)
        } else {
            (room, if i % 2 == 0 { ann } else { bob })
        };
        app.commands
            .send_message(
                target,
                sender,
                &format!("message {i} ✓ \"quoted\", comma"),
                &format!("c{i}"),
                &meta(),
            )
            .await
            .expect("send");
    }
    app.commands
        .leave_room(room, bob, &meta())
        .await
        .expect("leave");
    if bulk > 0 {
        sqlx::query(
            r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
               SELECT 'Room', 'bulk-' || (g % 7), 1 + g / 7, 'MessageSent', '1.0',
                      json_build_object('MessageSent', json_build_object(
                          'message_id', gen_random_uuid(), 'seq', 1 + g / 7,
                          'sender', gen_random_uuid(),
                          'body', 'bulk message ' || g, 'client_msg_id', 'b' || g,
                          'sent_at', '2026-11-20T00:00:00Z')),
                      '{"actor":"bulk","request_id":"seed"}'
                 FROM generate_series(0, $1::bigint - 1) AS g"#,
        )
        .bind(bulk)
        .execute(&db.pool)
        .await
        .expect("bulk seed");
    }
    caught_up(&app.read_models).await;
    History {
        ann,
        room,
        other_room,
    }
}

/// The stored log, in position order, as an export line should show it.
async fn stored_lines(pool: &PgPool) -> Vec<Value> {
    let rows = sqlx::query(
        "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
                event_payload(payload, erasable) AS payload, metadata, recorded_at
           FROM events ORDER BY position",
    )
    .fetch_all(pool)
    .await
    .expect("reading the store");
    rows.iter()
        .map(|row| {
            let event_type: String = row.get("event_type");
            let mut payload: Value = row.get("payload");
            if event_type == "UserRegistered" {
                payload["UserRegistered"]["password_hash"] = json!("[redacted]");
            }
            json!({
                "position": row.get::<Option<i64>, _>("position").expect("positioned"),
                "aggregateType": row.get::<String, _>("aggregate_type"),
                "aggregateId": row.get::<String, _>("aggregate_id"),
                "sequence": row.get::<i64, _>("sequence"),
                "eventType": event_type,
                "eventVersion": row.get::<String, _>("event_version"),
                "payload": payload,
                "metadata": row.get::<Value, _>("metadata"),
                "recordedAt": row
                    .get::<DateTime<Utc>, _>("recorded_at")
                    .to_rfc3339_opts(SecondsFormat::Micros, true),
            })
        })
        .collect()
}

// ---- Export --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_holds_every_event_of_the_store_in_position_order() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    seed_history(&app, &db, 12_000).await;
    let scratch = Scratch::new();
    let file = scratch.path("events.jsonl");

    let output = run(parley(&db)
        .args(["events", "export", "--output"])
        .arg(&file));
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert!(
        output.stdout.is_empty(),
        "with --output nothing goes to stdout"
    );
    assert_eq!(
        scratch.entries(),
        vec!["events.jsonl"],
        "no temporary file is left"
    );
    let bytes = std::fs::read(&file).expect("export file");
    let exported = lines(&bytes);
    let stored = stored_lines(&db.pool).await;

    assert_eq!(exported.len(), stored.len(), "count");
    assert_eq!(
        positions_of(&exported),
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "every position, in order"
    );
    for (line, expected) in exported.iter().zip(&stored) {
        assert_eq!(
            line, expected,
            "content at position {}",
            expected["position"]
        );
    }
    // Keys in their fixed order, and the secret nowhere.
    let text = String::from_utf8(bytes).expect("utf-8");
    let first = text.lines().next().expect("a line");
    let mut at = 0;
    for key in [
        "\"position\":",
        "\"aggregateType\":",
        "\"aggregateId\":",
        "\"sequence\":",
        "\"eventType\":",
        "\"eventVersion\":",
        "\"payload\":",
        "\"metadata\":",
        "\"recordedAt\":",
    ] {
        let found = first[at..]
            .find(key)
            .unwrap_or_else(|| panic!("{key} after {at} in {first}"));
        at += found + key.len();
    }
    // Payload and metadata are canonical JSON (compact, sorted keys) whatever their stored
    // form: the bulk rows were stored with spaces and in insertion order.
    for (raw, line) in text.lines().zip(&exported) {
        for key in ["payload", "metadata"] {
            let canonical = format!(
                "\"{key}\":{}",
                serde_json::to_string(&line[key]).expect("JSON")
            );
            assert!(raw.contains(&canonical), "{key} not canonical in {raw}");
        }
    }
    assert!(!text.contains(SECRET_HASH), "password hashes are redacted");
    assert_eq!(
        text.matches("\"password_hash\":\"[redacted]\"").count(),
        2,
        "both registrations show the redaction"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_exports_of_the_same_range_are_byte_identical_in_both_formats() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    seed_history(&app, &db, 6_000).await;
    let scratch = Scratch::new();

    let first = export(&db, &[]);
    let second = export(&db, &[]);
    assert!(!first.is_empty());
    assert_eq!(first, second, "JSONL, twice");
    let file = scratch.path("again.jsonl");
    let output = run(parley(&db).args(["events", "export", "-o"]).arg(&file));
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        std::fs::read(&file).expect("file"),
        first,
        "file and stdout agree"
    );

    let csv = export(&db, &["--format", "csv", "--from", "3", "--to", "5000"]);
    assert_eq!(
        csv,
        export(&db, &["--format", "csv", "--from", "3", "--to", "5000"]),
        "CSV, twice"
    );
    let text = String::from_utf8(csv).expect("utf-8");
    let mut rows = text.lines();
    assert_eq!(
        rows.next(),
        Some("position,aggregateType,aggregateId,sequence,eventType,eventVersion,payload,metadata,recordedAt")
    );
    // The CSV rows hold the same events as the JSONL lines.
    let jsonl = lines(&export(&db, &["--from", "3", "--to", "5000"]));
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("csv row")).collect();
    assert_eq!(records.len(), jsonl.len());
    for (record, line) in records.iter().zip(&jsonl) {
        assert_eq!(record[0].parse::<i64>().ok(), line["position"].as_i64());
        assert_eq!(&record[4], line["eventType"].as_str().expect("type"));
        let payload: Value = serde_json::from_str(&record[6]).expect("payload is JSON text");
        assert_eq!(payload, line["payload"]);
        let metadata: Value = serde_json::from_str(&record[7]).expect("metadata is JSON text");
        assert_eq!(metadata, line["metadata"]);
        assert_eq!(&record[8], line["recordedAt"].as_str().expect("recordedAt"));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_export_filter_selects_exactly_its_events() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    let history = seed_history(&app, &db, 0).await;
    let all = stored_lines(&db.pool).await;
    let select = |keep: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        all.iter().filter(|l| keep(l)).cloned().collect()
    };

    assert_eq!(
        lines(&export(&db, &["--from", "4", "--to", "9"])),
        select(&|l| (4..=9).contains(&l["position"].as_i64().unwrap_or(0))),
        "inclusive position range"
    );
    assert_eq!(
        positions_of(&lines(&export(&db, &["--from", "7", "--to", "7"]))),
        vec![7]
    );
    assert_eq!(
        lines(&export(&db, &["--aggregate-type", "User"])),
        select(&|l| l["aggregateType"] == "User"),
        "aggregate type"
    );
    let room = history.room.to_string();
    let by_room = lines(&export(&db, &["--aggregate-id", &room]));
    assert_eq!(
        by_room,
        select(&|l| l["aggregateId"] == room.as_str()),
        "aggregate id"
    );
    assert_eq!(
        by_room,
        lines(&export(
            &db,
            &["--aggregate-type", "Room", "--aggregate-id", &room]
        )),
        "with or without its type"
    );
    assert!(
        export(&db, &["--aggregate-type", "User", "--aggregate-id", &room]).is_empty(),
        "an id under the wrong type matches nothing"
    );
    let messages = lines(&export(&db, &["--event-type", "MessageSent"]));
    assert_eq!(messages.len(), 20);
    assert_eq!(
        messages,
        select(&|l| l["eventType"] == "MessageSent"),
        "one event type"
    );
    assert_eq!(
        lines(&export(
            &db,
            &["--event-type", "MemberJoined", "--event-type", "MemberLeft"]
        )),
        select(&|l| l["eventType"] == "MemberJoined" || l["eventType"] == "MemberLeft"),
        "several event types"
    );
    let other = history.other_room.to_string();
    assert_eq!(
        lines(&export(
            &db,
            &[
                "--aggregate-id",
                &other,
                "--event-type",
                "MessageSent",
                "--from",
                "10",
                "--format",
                "jsonl"
            ]
        )),
        select(&|l| l["aggregateId"] == other.as_str()
            && l["eventType"] == "MessageSent"
            && l["position"].as_i64().unwrap_or(0) >= 10),
        "filters combine"
    );
    assert!(
        export(&db, &["--from", "1000"]).is_empty(),
        "beyond the head: empty"
    );
    assert!(
        export(&db, &["--aggregate-id", "no-such-aggregate"]).is_empty(),
        "an id no aggregate has: empty"
    );
    assert_eq!(
        export(&db, &["--aggregate-id", "no-such-aggregate", "--format", "csv"]),
        b"position,aggregateType,aggregateId,sequence,eventType,eventVersion,payload,metadata,recordedAt\n",
        "an empty CSV export still has its header"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_of_a_range_is_the_same_before_and_while_events_are_written() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    let history = seed_history(&app, &db, 6_000).await;
    let head = caught_up(&app.read_models).await;
    let range = ["--from", "2", "--to", &head.to_string()].map(str::to_owned);
    let before = export(&db, &range.iter().map(String::as_str).collect::<Vec<_>>());

    // Writers keep committing (slowly and fast) while the exports run.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..3 {
        let bus = app.commands.clone();
        let (stop, written) = (stop.clone(), written.clone());
        let (room, sender) = (history.room, history.ann);
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                bus.send_message(
                    room,
                    sender,
                    "during the export",
                    &format!("w{w}-{i}"),
                    &meta(),
                )
                .await
                .expect("send during export");
                written.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    support::eventually("the writers are writing", || async {
        written.load(Ordering::Relaxed) >= 20
    })
    .await;
    for _ in 0..3 {
        let db_url = db.url();
        let range = range.clone();
        let during = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_parley"))
                .args(["events", "export"])
                .args(&range)
                .env("DATABASE_URL", db_url)
                .stdin(Stdio::null())
                .output()
                .expect("export")
        })
        .await
        .expect("export task");
        assert_eq!(during.status.code(), Some(0));
        assert!(
            during.stdout == before,
            "the range [2, {head}] changed while writing"
        );
    }
    // An open-ended export during writes is a gapless prefix of the log.
    let open = export(&db, &[]);
    let positions = positions_of(&lines(&open));
    assert!(positions.len() as i64 >= head);
    assert_eq!(positions, (1..=positions.len() as i64).collect::<Vec<_>>());
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(written.load(Ordering::Relaxed) > 0, "writers were writing");
    caught_up(&app.read_models).await;
    assert_eq!(
        export(&db, &range.iter().map(String::as_str).collect::<Vec<_>>()),
        before,
        "and after"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_export_leaves_no_file_that_looks_whole() {
    let db = TestDb::new().await;
    let scratch = Scratch::new();
    let file = scratch.path("events.jsonl");
    // The store is unreachable: the export fails at start.
    let output = run(parley(&db)
        .args(["events", "export", "--output"])
        .arg(&file)
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .env("RUST_LOG", "off"));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&output).len(),
        1,
        "{:?}",
        stderr_lines(&output)
    );
    assert!(scratch.entries().is_empty(), "{:?}", scratch.entries());
    // The output's directory does not exist: nothing is created anywhere.
    let nowhere = scratch.path("missing/events.jsonl");
    let output = run(parley(&db)
        .args(["events", "export", "--output"])
        .arg(&nowhere));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&output).len(),
        1,
        "{:?}",
        stderr_lines(&output)
    );
    assert!(scratch.entries().is_empty());
}

/// The export reads the log in statements of 100,000 positions with the filter's values
/// written into them: positions on both sides of those boundaries, and an aggregate id with
/// a quote and a backslash (of two aggregate types, so it is filtered by id alone), come out
/// exactly as the `events` query gives them.
#[tokio::test]
async fn an_export_crosses_its_read_pages_and_quotes_filter_values() {
    let db = TestDb::new().await;
    let odd = r"it's a \ 'name'";
    let rows: [(i64, &str, &str, i64, &str); 7] = [
        (1, "User", odd, 1, "UserRegistered"),
        (99_999, "Room", "r-1", 1, "RoomCreated"),
        (100_000, "Room", odd, 1, "RoomCreated"),
        (100_001, "Room", "r-1", 2, "MessageSent"),
        (200_000, "Room", odd, 2, "MessageSent"),
        (200_001, "Room", "r-1", 3, "MessageSent"),
        (250_000, "Room", odd, 3, "MessageSent"),
    ];
    for (position, aggregate_type, aggregate_id, sequence, event_type) in rows {
        let payload = if event_type == "UserRegistered" {
            json!({ event_type: { "password_hash": SECRET_HASH, "username": "o'neil" } })
        } else {
            json!({ event_type: { "body": "a \"quoted\" \\ body", "seq": sequence } })
        };
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata, position)
             VALUES ($1, $2, $3, $4, '1.0', $5::json, $6::json, $7)",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .bind(event_type)
        .bind(payload.to_string())
        .bind(json!({"request_id": "r'1"}).to_string())
        .bind(position)
        .execute(&db.pool)
        .await
        .expect("inserting a positioned event");
    }
    let log = parley_projections::postgres::PgEventLog::new(db.pool.clone());
    let expected = |filter: &EventFilter| {
        let log = log.clone();
        let filter = filter.clone();
        async move {
            let page = log
                .events(None, Some(1000), &filter)
                .await
                .expect("events page");
            page.events
                .iter()
                .map(|e| {
                    json!({
                        "position": e.position.0,
                        "aggregateType": e.aggregate_type,
                        "aggregateId": e.aggregate_id,
                        "sequence": e.sequence,
                        "eventType": e.event_type,
                        "eventVersion": e.event_version,
                        "payload": e.payload,
                        "metadata": e.metadata,
                        "recordedAt": e.recorded_at_rfc3339(),
                    })
                })
                .collect::<Vec<Value>>()
        }
    };

    let all = lines(&export(&db, &[]));
    assert_eq!(
        positions_of(&all),
        vec![1, 99_999, 100_000, 100_001, 200_000, 200_001, 250_000]
    );
    assert_eq!(all, expected(&EventFilter::all()).await);
    assert_eq!(
        all[0]["payload"]["UserRegistered"]["password_hash"],
        "[redacted]"
    );

    let by_id = lines(&export(&db, &["--aggregate-id", odd]));
    assert_eq!(positions_of(&by_id), vec![1, 100_000, 200_000, 250_000]);
    let filter = EventFilter::parse(None, None, None, Some(odd), &[]).expect("filter");
    assert_eq!(by_id, expected(&filter).await);

    let ranged = lines(&export(
        &db,
        &[
            "--from",
            "100000",
            "--to",
            "200000",
            "--aggregate-type",
            "Room",
            "--aggregate-id",
            odd,
            "--event-type",
            "MessageSent",
        ],
    ));
    assert_eq!(positions_of(&ranged), vec![200_000]);

    let csv = export(
        &db,
        &["--format", "csv", "--from", "99999", "--to", "200001"],
    );
    let mut reader = csv::Reader::from_reader(csv.as_slice());
    let positions: Vec<String> = reader
        .records()
        .map(|r| r.expect("a CSV row")[0].to_owned())
        .collect();
    assert_eq!(positions, ["99999", "100000", "100001", "200000", "200001"]);
}

// ---- The events query ----------------------------------------------------------------------

struct Harness {
    _db: Option<TestDb>,
    app: App,
}

impl Harness {
    async fn postgres() -> Self {
        let db = TestDb::new().await;
        let app = postgres_app(&db);
        Self { _db: Some(db), app }
    }

    fn memory() -> Self {
        Self {
            _db: None,
            app: App::start(EventLog::memory(), "s".into(), fast_config()),
        }
    }
}

macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                let h = super::Harness::postgres().await;
                super::$scenario(&h.app).await;
                h.app.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_the_embedded_store() {
                let h = super::Harness::memory();
                super::$scenario(&h.app).await;
                h.app.stop().await;
            }
        }
    )*};
}

on_both_stores!(
    the_events_query_pages_through_the_log_with_filters_and_redaction,
    room_at_every_position_of_a_scripted_history_equals_the_state_recorded_then,
    an_old_message_sent_event_still_replays_and_projects,
);

fn filter(
    from: Option<i64>,
    to: Option<i64>,
    aggregate_type: Option<&str>,
    aggregate_id: Option<&str>,
    event_types: &[&str],
) -> EventFilter {
    let types: Vec<String> = event_types.iter().map(|t| (*t).to_owned()).collect();
    EventFilter::parse(from, to, aggregate_type, aggregate_id, &types).expect("valid filter")
}

async fn the_events_query_pages_through_the_log_with_filters_and_redaction(app: &App) {
    let ann = register(app, "ann").await;
    let bob = register(app, "bob").await;
    app.commands
        .grant_role(ann, Role::Analyst, &meta())
        .await
        .expect("grant");
    let room = app
        .commands
        .create_room(ann, "r", vec![bob], &meta())
        .await
        .expect("room");
    app.commands
        .join_room(room, bob, &meta())
        .await
        .expect("join");
    for i in 0..5 {
        app.commands
            .send_message(room, ann, "hi", &format!("c{i}"), &meta())
            .await
            .expect("send");
    }
    let head = caught_up(&app.read_models).await;
    assert_eq!(head, 11);
    let models = &app.read_models;

    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let page = models
            .events(after, Some(3), &EventFilter::all())
            .await
            .expect("page");
        assert!(page.events.len() <= 3);
        seen.extend(page.events.iter().cloned());
        if !page.has_more {
            break;
        }
        after = page.events.last().map(|e| e.position.0);
    }
    assert_eq!(
        seen.iter().map(|e| e.position.0).collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    let registered = &seen[0];
    assert_eq!(registered.event_type, "UserRegistered");
    assert_eq!(
        registered.payload["UserRegistered"]["password_hash"],
        "[redacted]"
    );
    assert_eq!(registered.payload["UserRegistered"]["username"], "ann");
    assert!(!seen
        .iter()
        .any(|e| e.payload.to_string().contains(SECRET_HASH)));

    let all = models
        .events(None, Some(1000), &EventFilter::all())
        .await
        .expect("all");
    assert!(!all.has_more);
    assert_eq!(all.events, seen, "one page or many, the same events");

    let count = |f: EventFilter| async move {
        models
            .events(None, Some(100), &f)
            .await
            .expect("filtered page")
            .events
    };
    let messages = count(filter(None, None, None, None, &["MessageSent"])).await;
    assert_eq!(
        messages
            .iter()
            .map(|e| e.payload["MessageSent"]["seq"].as_i64())
            .collect::<Vec<_>>(),
        (1..=5).map(Some).collect::<Vec<_>>()
    );
    let room_id = room.to_string();
    assert_eq!(
        count(filter(None, None, Some("Room"), Some(&room_id), &[]))
            .await
            .len(),
        8,
        "created, invited, joined, five messages"
    );
    assert_eq!(
        count(filter(None, None, None, Some(&room_id), &[]))
            .await
            .len(),
        8,
        "the id alone finds its aggregate"
    );
    assert_eq!(
        count(filter(None, None, Some("User"), None, &[]))
            .await
            .len(),
        3
    );
    assert_eq!(
        count(filter(Some(2), Some(4), None, None, &[]))
            .await
            .iter()
            .map(|e| e.position.0)
            .collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert!(
        count(filter(None, None, None, Some("no-such-aggregate"), &[]))
            .await
            .is_empty()
    );
    let tail = models
        .events(Some(9), Some(5), &EventFilter::all())
        .await
        .expect("tail");
    assert_eq!(tail.events.len(), 2);
    assert!(!tail.has_more);

    assert!(matches!(
        models.events(Some(-1), None, &EventFilter::all()).await,
        Err(ReadModelError::Filter(FilterError::NegativePosition(-1)))
    ));
    assert!(matches!(
        models.events(None, Some(0), &EventFilter::all()).await,
        Err(ReadModelError::Filter(FilterError::PageSize { .. }))
    ));
}

// ---- Time travel ---------------------------------------------------------------------------

/// The room as the script knows it after an event.
#[derive(Clone, Debug, Default, PartialEq)]
struct Expected {
    members: BTreeSet<UserId>,
    invited: BTreeSet<UserId>,
    /// (seq, body, sender, position) of the newest message.
    last_message: Option<(i64, String, UserId, i64)>,
    message_count: i64,
}

/// Drives a scripted history and records, for every position, what the room was then
/// (`None`: not created yet).
struct Script<'a> {
    app: &'a App,
    room: Option<RoomId>,
    state: Option<Expected>,
    at: Vec<Option<Expected>>,
}

impl Script<'_> {
    /// Checks that `events` new positions appeared and records the states after each.
    async fn recorded(&mut self, states: Vec<Option<Expected>>) {
        let head = caught_up(&self.app.read_models).await;
        self.at.extend(states);
        assert_eq!(
            head,
            self.at.len() as i64,
            "one position per scripted event"
        );
    }

    async fn register(&mut self, name: &str) -> UserId {
        let id = register(self.app, name).await;
        self.recorded(vec![self.state.clone()]).await;
        id
    }

    async fn create(&mut self, host: UserId, invited: &[UserId]) -> RoomId {
        let room = self
            .app
            .commands
            .create_room(host, "history", invited.to_vec(), &meta())
            .await
            .expect("create");
        let mut state = Expected {
            members: BTreeSet::from([host]),
            ..Expected::default()
        };
        let mut states = vec![Some(state.clone())];
        for user in invited {
            state.invited.insert(*user);
            states.push(Some(state.clone()));
        }
        self.room = Some(room);
        self.state = Some(state);
        self.recorded(states).await;
        room
    }

    fn room(&self) -> RoomId {
        self.room.expect("room created")
    }

    fn change(&mut self, f: impl FnOnce(&mut Expected)) -> Vec<Option<Expected>> {
        let state = self.state.as_mut().expect("room created");
        f(state);
        vec![Some(state.clone())]
    }

    async fn join(&mut self, user: UserId) {
        self.app
            .commands
            .join_room(self.room(), user, &meta())
            .await
            .expect("join");
        let states = self.change(|s| {
            s.invited.remove(&user);
            s.members.insert(user);
        });
        self.recorded(states).await;
    }

    async fn leave(&mut self, user: UserId) {
        self.app
            .commands
            .leave_room(self.room(), user, &meta())
            .await
            .expect("leave");
        let states = self.change(|s| {
            s.members.remove(&user);
        });
        self.recorded(states).await;
    }

    async fn send(&mut self, sender: UserId, body: &str) {
        let sent = self
            .app
            .commands
            .send_message(self.room(), sender, body, body, &meta())
            .await
            .expect("send");
        let position = self.at.len() as i64 + 1;
        let states = self.change(|s| {
            s.message_count += 1;
            assert_eq!(sent.seq, MessageSeq(s.message_count as u64));
            s.last_message = Some((s.message_count, body.to_owned(), sender, position));
        });
        self.recorded(states).await;
    }
}

async fn room_at_every_position_of_a_scripted_history_equals_the_state_recorded_then(app: &App) {
    let mut script = Script {
        app,
        room: None,
        state: None,
        at: Vec::new(),
    };
    let host = script.register("host").await;
    let alice = script.register("alice").await;
    let bob = script.register("bob").await;
    script.create(host, &[alice, bob]).await;
    script.join(alice).await;
    script.send(host, "m1 from the host").await;
    script.send(alice, "m2 from alice").await;
    let carol = script.register("carol").await;
    script.join(bob).await;
    script.leave(alice).await;
    script.send(bob, "m3 from bob").await;
    script.join(alice).await;
    script.join(carol).await;
    script.leave(host).await;
    script.send(carol, "m4 from carol").await;
    script.send(alice, "m5 back again").await;
    script.leave(bob).await;

    let room = script.room();
    let mut live = app
        .read_models
        .room(room)
        .await
        .expect("room view")
        .expect("room exists");
    // Time travel answers at the log's precision (the embedded store keeps nanoseconds).
    live.created_at = live.created_at.trunc_subsecs(6);
    let head = script.at.len() as i64;
    for position in 0..=head + 3 {
        let at = GlobalPosition(position);
        let expected = if position == 0 {
            None
        } else {
            script.at[(position.min(head) - 1) as usize].clone()
        };
        let got = app.read_models.room_at(room, at).await.expect("room_at");
        match (&expected, &got) {
            (None, None) => {}
            (Some(expected), Some(got)) => {
                assert_eq!(got.id, room);
                assert_eq!(got.position, at);
                assert_eq!(got.name, "history");
                assert_eq!(got.host, host);
                assert_eq!(got.created_at, live.created_at);
                assert_eq!(
                    got.members.iter().copied().collect::<BTreeSet<_>>(),
                    expected.members,
                    "members at {position}"
                );
                assert_eq!(
                    got.invited.iter().copied().collect::<BTreeSet<_>>(),
                    expected.invited,
                    "invited at {position}"
                );
                assert_eq!(
                    got.message_count, expected.message_count,
                    "count at {position}"
                );
                assert_eq!(
                    got.last_message.as_ref().map(|m| (
                        m.seq,
                        m.body.clone(),
                        m.sender,
                        m.position.0
                    )),
                    expected.last_message,
                    "last message at {position}"
                );
            }
            _ => panic!("at {position}: expected {expected:?}, got {got:?}"),
        }
        // History as it was: exactly the messages sent by then, from either end.
        let count = expected.as_ref().map_or(0, |e| e.message_count);
        for request in [
            PageRequest {
                after: Some(0),
                first: Some(100),
                ..Default::default()
            },
            PageRequest::default(),
        ] {
            let page = app
                .read_models
                .messages_at(room, request, at)
                .await
                .expect("messages_at");
            assert_eq!(
                page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
                (1..=count).collect::<Vec<_>>(),
                "history at {position}"
            );
            assert!(!page.has_more);
        }
    }
    let paged = app
        .read_models
        .messages_at(
            room,
            PageRequest {
                last: Some(2),
                ..Default::default()
            },
            GlobalPosition(head),
        )
        .await
        .expect("page");
    assert_eq!(
        paged.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert!(paged.has_more);

    // The present, replayed, is what the live read model says.
    let now = app
        .read_models
        .room_at(room, GlobalPosition(head))
        .await
        .expect("room_at")
        .expect("exists");
    assert_eq!(now.view(), live);
    assert!(app
        .read_models
        .room_at(RoomId::new(), GlobalPosition(head))
        .await
        .expect("unknown room")
        .is_none());
    assert!(matches!(
        app.read_models.room_at(room, GlobalPosition(-1)).await,
        Err(ReadModelError::Filter(FilterError::NegativePosition(-1)))
    ));
}

// ---- Upcasting -----------------------------------------------------------------------------

async fn an_old_message_sent_event_still_replays_and_projects(app: &App) {
    let host = register(app, "veteran").await;
    let room = app
        .commands
        .create_room(host, "legacy", Vec::new(), &meta())
        .await
        .expect("room");
    // A message as Parley 0.9 stored it: `text` instead of `body`, no `client_msg_id`.
    let message_id = uuid::Uuid::now_v7();
    let old = SerializedEvent::new(
        room.to_string(),
        2,
        "Room".to_owned(),
        "MessageSent".to_owned(),
        "0.9".to_owned(),
        json!({"MessageSent": {
            "message_id": message_id,
            "seq": 1,
            "sender": host,
            "text": "written by 0.9",
            "sent_at": "2024-01-01T00:00:00Z"
        }}),
        json!({"request_id": "legacy-fixture"}),
    );
    app.log
        .append_batch(&[old])
        .await
        .expect("append the old event");

    // The aggregate replays it through the upcaster (a fresh store: no cache, no snapshot)…
    let store =
        AggregateStore::<Room>::with_options(app.log.clone(), 16, 250, parley_domain::upcasters());
    let loaded = store
        .load_aggregate(&room.to_string())
        .await
        .expect("replays");
    assert_eq!(
        (loaded.sequence(), loaded.state().last_seq()),
        (2, MessageSeq(1))
    );
    // …and could not without it.
    let bare = AggregateStore::<Room>::with_options(app.log.clone(), 16, 250, Vec::new());
    assert!(bare.load_aggregate(&room.to_string()).await.is_err());

    // New messages follow it, and the projection holds both.
    let sent = app
        .commands
        .send_message(room, host, "written by 1.0", "c-1", &meta())
        .await
        .expect("send after the old event");
    assert_eq!(sent.seq, MessageSeq(2));
    let head = caught_up(&app.read_models).await;
    let page = app
        .read_models
        .messages(
            room,
            PageRequest {
                after: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("history");
    let got: Vec<(i64, &str, &str)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.body.as_str(), m.client_msg_id.as_str()))
        .collect();
    let legacy_id = format!("legacy-{message_id}");
    assert_eq!(
        got,
        vec![
            (1, "written by 0.9", legacy_id.as_str()),
            (2, "written by 1.0", "c-1")
        ]
    );
    let then = app
        .read_models
        .room_at(room, GlobalPosition(head))
        .await
        .expect("room_at")
        .expect("exists");
    assert_eq!(then.message_count, 2);
    // The log itself keeps the event as stored: analysts see its version and shape.
    let stored = app
        .read_models
        .events(
            None,
            None,
            &filter(
                None,
                None,
                Some("Room"),
                Some(&room.to_string()),
                &["MessageSent"],
            ),
        )
        .await
        .expect("events");
    assert_eq!(stored.events[0].event_version, "0.9");
    assert_eq!(
        stored.events[0].payload["MessageSent"]["text"],
        "written by 0.9"
    );
}

// ---- Shadow rebuilds -----------------------------------------------------------------------

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
        .mark_read(room, users[1], 100)
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
            let (mut last_seq, mut newest) = (0, 0);
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
                let top = page.messages.last().map_or(0, |m| m.seq);
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

// ---- Administrative commands ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_status_and_rebuild_work_through_the_cli() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    seed_history(&app, &db, 0).await;
    let head = caught_up(&app.read_models).await;
    let before = dump_all(&db.pool).await;

    let output = run(parley(&db).args(["projections", "status"]));
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let table = String::from_utf8(output.stdout).expect("utf-8");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        vec!["projection", "checkpoint", "lag", "events", "lag", "ms"]
    );
    for (row, name) in rows[1..].iter().zip(["users", "rooms", "messages"]) {
        assert_eq!(row, &vec![name, &head.to_string(), "0", "0"]);
    }

    let output = run(parley(&db).args(["projections", "rebuild", "messages"]));
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        said.starts_with(&format!("rebuilt messages (at position {head})")),
        "{said}"
    );
    assert!(output.stderr.is_empty(), "{:?}", stderr_lines(&output));
    let output = run(parley(&db).args(["projections", "rebuild"]));
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    caught_up(&app.read_models).await;
    assert_eq!(dump_all(&db.pool).await, before);

    let output = run(parley(&db).args(["projections", "rebuild", "nope"]));
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr_lines(&output),
        vec!["parley: unknown projection \"nope\" (expected users, rooms or messages)"]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_grant_gives_a_role_through_the_cli() {
    let db = TestDb::new().await;
    let app = postgres_app(&db);
    let ann = register(&app, "ann").await;

    let output = run(parley(&db).args(["users", "grant", "ann", "analyst"]));
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "granted analyst to ann\n"
    );
    let output = run(parley(&db).args(["users", "grant", "ann", "admin"]));
    assert_eq!(output.status.code(), Some(0), "{:?}", stderr_lines(&output));
    caught_up(&app.read_models).await;
    let user = app
        .read_models
        .user(ann)
        .await
        .expect("user")
        .expect("exists");
    assert_eq!(user.roles, vec!["analyst".to_owned(), "admin".to_owned()]);
    let granted: Vec<(String, Value)> = sqlx::query_as(
        "SELECT event_type, payload::jsonb::json FROM events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(ann.to_string())
    .fetch_all(&db.pool)
    .await
    .expect("events");
    assert_eq!(
        granted[1],
        (
            "RoleGranted".to_owned(),
            json!({"RoleGranted": {"role": "analyst"}})
        )
    );

    for (args, code, message) in [
        (
            ["users", "grant", "ann", "analyst"],
            1,
            "parley: ann already has the role analyst",
        ),
        (
            ["users", "grant", "nobody", "analyst"],
            1,
            "parley: no user is registered as \"nobody\"",
        ),
        (
            ["users", "grant", "ann", "root"],
            2,
            "parley: unknown role \"root\" (expected analyst or admin)",
        ),
    ] {
        let output = run(parley(&db).args(args).env("RUST_LOG", "off"));
        assert_eq!(output.status.code(), Some(code), "{args:?}");
        assert_eq!(stderr_lines(&output), vec![message.to_owned()], "{args:?}");
    }
    app.stop().await;
}
