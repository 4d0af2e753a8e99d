//! The `parley` binary as a user runs it: start-up, configuration errors, health endpoints,
//! graceful shutdown, migrations.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::TestDb;

fn parley() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "PARLEY_JWT_SECRET",
        "PARLEY_BIND",
        "PARLEY_DB_POOL_SIZE",
        "PARLEY_METRICS_BIND",
    ] {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "info");
    command
}

/// A running server process and the address it bound.
struct Running {
    child: Child,
    addr: String,
    /// What the server logged before it was listening.
    startup_log: Vec<String>,
    stderr: mpsc::Receiver<String>,
}

fn start(mut command: Command) -> Running {
    let mut child = command
        .env("PARLEY_BIND", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("starting parley");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                if let Some(addr) = line.split("addr=").nth(1) {
                    let addr = addr.split_whitespace().next().expect("address").to_owned();
                    return Running {
                        child,
                        addr,
                        startup_log: seen,
                        stderr: lines,
                    };
                }
                seen.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "parley did not report a listening address; stderr:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
}

impl Running {
    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(20));
        let rest = self.stderr.try_iter().collect();
        (status, rest)
    }
}

impl Drop for Running {
    /// A failed test must not leave a server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for parley") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("parley did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs to completion and returns (exit code, stderr lines).
fn run_to_end(command: &mut Command) -> (Option<i32>, Vec<String>) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .expect("running parley");
    let stderr = String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect();
    (output.status.code(), stderr)
}

#[tokio::test]
async fn embedded_mode_answers_health_checks_and_exits_cleanly_on_sigterm() {
    let server = start(parley());
    let health = server.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["store"], "memory");

    let (status, stderr) = server.terminate();
    assert_eq!(status.code(), Some(0), "stderr: {stderr:?}");
    assert!(
        stderr.iter().any(|l| l.contains("stopped")),
        "stderr: {stderr:?}"
    );
}

/// With `PARLEY_METRICS_BIND`, `/metrics` is served there and nowhere else.
#[tokio::test]
async fn metrics_can_move_to_an_address_of_their_own() {
    let mut command = parley();
    command.env("PARLEY_METRICS_BIND", "127.0.0.1:0");
    let server = start(command);
    let metrics_addr = server
        .startup_log
        .iter()
        .find(|l| l.contains("serving /metrics"))
        .and_then(|l| l.split("metrics=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no metrics address in {:?}", server.startup_log))
        .to_owned();
    assert_eq!(server.get("/metrics").await.status(), 404);
    assert_eq!(server.get("/healthz").await.status(), 200);
    let scraped = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .expect("GET /metrics on the metrics address");
    assert_eq!(scraped.status(), 200);
    let text = scraped.text().await.expect("metrics text");
    assert!(text.contains("parley_http_requests_total"), "{text}");
    let graphql = reqwest::Client::new()
        .post(format!("http://{metrics_addr}/graphql"))
        .json(&serde_json::json!({ "query": "{ __typename }" }))
        .send()
        .await
        .expect("POST /graphql on the metrics address");
    assert_eq!(
        graphql.status(),
        404,
        "the metrics address serves metrics only"
    );
    let (status, stderr) = server.terminate();
    assert_eq!(status.code(), Some(0), "stderr: {stderr:?}");
}

#[test]
fn metrics_on_the_api_address_twice_is_refused_at_start() {
    let mut command = parley();
    command
        .arg("serve")
        .env("PARLEY_BIND", "127.0.0.1:18081")
        .env("PARLEY_METRICS_BIND", "127.0.0.1:18081");
    assert_config_error(
        &mut command,
        "PARLEY_METRICS_BIND must differ from PARLEY_BIND",
    );
}

#[tokio::test]
async fn embedded_mode_warns_that_data_is_lost_on_exit() {
    let mut command = parley();
    command.arg("serve");
    let server = start(command);
    let warned = server
        .startup_log
        .iter()
        .any(|l| l.contains("WARN") && l.contains("ALL DATA IS LOST"));
    assert!(warned, "no data-loss warning in {:?}", server.startup_log);
    let (status, _) = server.terminate();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn postgres_mode_migrates_serves_and_reports_ready() {
    let db = TestDb::empty().await;
    let mut command = parley();
    command.env("DATABASE_URL", db.url()).env(
        "PARLEY_JWT_SECRET",
        "a-test-secret-that-is-long-enough-0123456789",
    );
    let server = start(command);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["store"], "postgres");
    let (status, _) = server.terminate();
    assert_eq!(status.code(), Some(0));

    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('events', 'snapshots')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, 2, "serve applied the migrations");
}

#[tokio::test]
async fn migrate_applies_the_schema_and_is_idempotent() {
    let db = TestDb::empty().await;
    for _ in 0..2 {
        let (code, stderr) = run_to_end(parley().arg("migrate").env("DATABASE_URL", db.url()));
        assert_eq!(code, Some(0), "stderr: {stderr:?}");
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, parley::app::MIGRATOR.iter().count());
}

/// Invalid configuration: exit code 2, and the reason on one line.
fn assert_config_error(command: &mut Command, expected: &str) {
    let (code, stderr) = run_to_end(command);
    assert_eq!(code, Some(2), "stderr: {stderr:?}");
    assert_eq!(stderr.len(), 1, "one line, got {stderr:?}");
    assert!(
        stderr[0].contains(expected),
        "{:?} does not mention {expected}",
        stderr[0]
    );
}

#[test]
fn a_database_without_a_jwt_secret_is_refused_at_start() {
    assert_config_error(
        parley().env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        ),
        "PARLEY_JWT_SECRET is required",
    );
}

#[test]
fn a_short_jwt_secret_is_refused_at_start() {
    assert_config_error(
        parley().env("PARLEY_JWT_SECRET", "short"),
        "at least 32 bytes",
    );
}

#[test]
fn a_database_url_that_is_not_postgres_is_refused_at_start() {
    assert_config_error(
        parley()
            .env("DATABASE_URL", "mysql://root@localhost/x")
            .env("PARLEY_JWT_SECRET", "x".repeat(40)),
        "DATABASE_URL",
    );
}

#[test]
fn an_unparsable_bind_address_is_refused_at_start() {
    let (code, stderr) = run_to_end(parley().env("PARLEY_BIND", "not-an-address"));
    assert_eq!(code, Some(2), "stderr: {stderr:?}");
    assert!(stderr.iter().any(|l| l.contains("not-an-address")));
}

#[test]
fn an_unreachable_database_fails_at_start_with_one_line() {
    let (code, stderr) = run_to_end(
        parley()
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/parley")
            .env("PARLEY_JWT_SECRET", "x".repeat(40))
            .env("RUST_LOG", "off"),
    );
    assert_eq!(code, Some(1), "stderr: {stderr:?}");
    assert_eq!(stderr.len(), 1, "one line, got {stderr:?}");
    assert!(
        stderr[0].contains("cannot connect to PostgreSQL at 127.0.0.1:1/parley"),
        "{stderr:?}"
    );
}

#[test]
fn a_taken_port_fails_at_start_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_to_end(parley().env("PARLEY_BIND", &addr).env("RUST_LOG", "off"));
    assert_eq!(code, Some(1), "stderr: {stderr:?}");
    assert_eq!(stderr.len(), 1, "one line, got {stderr:?}");
    assert!(
        stderr[0].contains(&format!("cannot listen on {addr}")),
        "{stderr:?}"
    );
}

/// A scratch directory for output files, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("parley-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn is_empty(&self) -> bool {
        std::fs::read_dir(&self.0)
            .expect("reading scratch dir")
            .next()
            .is_none()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn bad_export_arguments_are_refused_with_one_line_and_no_output_file() {
    let scratch = Scratch::new();
    let output = scratch.0.join("events.jsonl");
    for (args, expected) in [
        (&["--format", "xml"][..], "unknown export format \"xml\""),
        (
            &["--from", "9", "--to", "3"],
            "the position range is inverted",
        ),
        (
            &["--aggregate-type", "Order"],
            "unknown aggregate type \"Order\"",
        ),
        (&["--from", "-5"], "positions must not be negative (got -5)"),
        (&["--to=-1"], "positions must not be negative (got -1)"),
        (
            &["--event-type", "MessageSend"],
            "unknown event type \"MessageSend\"",
        ),
    ] {
        assert_config_error(
            parley()
                .args(["events", "export"])
                .args(args)
                .arg("--output")
                .arg(&output)
                .env(
                    "DATABASE_URL",
                    "postgres://postgres@127.0.0.1:5432/postgres",
                ),
            expected,
        );
        assert!(scratch.is_empty(), "{args:?} left a file behind");
    }
}

#[test]
fn the_administrative_commands_say_they_need_a_database() {
    for args in [
        &["events", "export"][..],
        &["projections", "status"],
        &["projections", "rebuild"],
        &["users", "grant", "ann", "analyst"],
    ] {
        assert_config_error(
            parley().args(args),
            "needs DATABASE_URL: the embedded in-memory store keeps no log",
        );
    }
}

/// The README's `--event-type` row names every event type the log can hold (it fell behind
/// once, when moderation and blocking added six).
#[test]
fn the_readme_lists_every_event_type_export_accepts() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `--event-type E` |"))
        .expect("the README's --event-type row");
    let missing: Vec<&str> = parley_projections::events::EVENT_TYPES
        .iter()
        .copied()
        .filter(|t| !row.contains(&format!("`{t}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "the README's --event-type row lacks {missing:?}"
    );
}
