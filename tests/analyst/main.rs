//! The event log for analysts, against real stores and the real binary: exports (content,
//! reproducibility, filters, concurrent writers), the `events` page query, time travel
//! (`room_at`, `messages_at`) at every position of a scripted history, upcasting of an old
//! event, shadow rebuilds under live traffic, and the administrative commands — one module
//! each; this file holds what they share (the stores, a seeded history, the binary).

#[path = "../support/mod.rs"]
#[macro_use]
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
use parley::store::AggregateStore;
use parley_domain::{MessageSeq, Role, Room, RoomId, UserId};
use parley_projections::postgres::{PgReadModels, RebuildConfig, RebuildPhase, RebuildProgress};
use parley_projections::{
    EventFilter, FilterError, GlobalPosition, PageRequest, ReadModelError, ReadModels,
};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use support::apps::postgres_app;
use support::checksums::dump_all;
use support::TestDb;

fn meta() -> CommandMeta {
    CommandMeta::system("test")
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

/// Ann, an analyst, and Bob, both members of Ann's new room `name`.
async fn analyst_and_member(app: &App, name: &str) -> (UserId, UserId, RoomId) {
    let ann = register(app, "ann").await;
    let bob = register(app, "bob").await;
    app.commands
        .grant_role(ann, Role::Analyst, &meta())
        .await
        .expect("grant");
    let room = app
        .commands
        .create_room(ann, name, vec![bob], &meta())
        .await
        .expect("room");
    app.commands
        .join_room(room, bob, &meta())
        .await
        .expect("join");
    (ann, bob, room)
}

/// A little of everything through the command layer, then `bulk` messages written straight
/// into the log (so exports span several pages).
async fn seed_history(app: &App, db: &TestDb, bulk: i64) -> History {
    let (ann, bob, room) = analyst_and_member(app, "analysis").await;
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

/// An events filter from its parts (valid by construction).
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

// The scenarios, by concern.
mod cli;
mod events_query;
mod export;
mod rebuild;
mod time_travel;
mod upcasting;
