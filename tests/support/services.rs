//! Private PostgreSQL and Redis servers for tests that kill, pause and restart them.
//!
//! Each one runs from the machine's binaries in a temporary directory, on a free loopback
//! port. Signals (`kill -9`, `SIGSTOP`, `SIGCONT`) go to the server process and, for
//! PostgreSQL, to every child of the postmaster too (each backend is a session leader of
//! its own, so a process-group signal would miss them), and to nothing else. The machine's shared services are never
//! touched. PostgreSQL refuses to run as root: when the tests run as root, `initdb` and
//! `postgres` run as the `postgres` OS user (the child process drops to its uid and gid
//! before `exec`), and the data directory is given to that user.
//!
//! Binaries: `PARLEY_PG_BIN` (a directory holding `initdb` and `postgres`), else the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH`; `PARLEY_REDIS_SERVER`, else `redis-server` on
//! `PATH`. A missing binary fails the test with a message that says what to install.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};
use tokio::time::{sleep, Instant};

/// How long a private service may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Sends `signal` (e.g. `KILL`, `STOP`, `CONT`) to every process of group `pgid`.
pub fn signal_group(pgid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} -- -{pgid} failed");
}

/// The direct children of `pid` (from /proc).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid …": comm may hold spaces, so parse after the last ')'.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// Whether `pid` runs (a zombie does not count).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s != "Z"))
        })
        .unwrap_or(false)
}

/// Sends `signal` to `pid`, then to each of its children (those it had before, and any it
/// forked meanwhile).
fn signal_tree(pid: u32, signal: &str) {
    let before = children(pid);
    signal_process(pid, signal);
    let mut seen = std::collections::HashSet::new();
    for child in before.into_iter().chain(children(pid)) {
        if seen.insert(child) {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Sends `signal` to one process.
pub fn signal_process(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

fn missing(what: &str, looked: &str, install: &str) -> String {
    format!(
        "\n\nThe fault tests need {what} to start a private instance and could not find it \
         (looked in: {looked}). Install it ({install}), or set PARLEY_PG_BIN (a directory with \
         initdb and postgres) or PARLEY_REDIS_SERVER (the redis-server program).\n"
    )
}

fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PARLEY_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").exists())
        .unwrap_or_else(|| {
            panic!(
                "{}",
                missing(
                    "PostgreSQL's initdb and postgres",
                    "PARLEY_PG_BIN, /usr/lib/postgresql/*/bin, PATH",
                    "Debian/Ubuntu: apt-get install postgresql"
                )
            )
        })
}

/// The uid and gid to run PostgreSQL as: ours, unless we are root (then `postgres`'s).
fn postgres_owner() -> Option<(u32, u32)> {
    let me = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("running id");
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("running id");
        assert!(
            out.status.success(),
            "the tests run as root, and PostgreSQL refuses to: they need an OS user \
             `postgres` to run it as (created by the postgresql package; or run the tests \
             as a non-root user)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a numeric id")
    };
    Some((id("-u"), id("-g")))
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
}

fn temp_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("parley-{kind}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("creating a temporary directory");
    dir
}

/// A private PostgreSQL server with a database `parley` (user `postgres`, trust auth).
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PrivatePostgres {
    /// `initdb`, start, create the database `parley`.
    pub async fn start() -> Self {
        let bin = pg_bin_dir();
        for tool in ["initdb", "postgres"] {
            assert!(
                bin.join(tool).exists(),
                "{}",
                missing(
                    &format!("PostgreSQL's {tool}"),
                    &bin.display().to_string(),
                    "Debian/Ubuntu: apt-get install postgresql"
                )
            );
        }
        let owner = postgres_owner();
        let dir = temp_dir("pg");
        chown_tree(&dir, owner);
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .stdin(Stdio::null());
        as_owner(&mut initdb, owner);
        let out = initdb.output().await.expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Self {
            port: free_port(),
            dir,
            bin,
            owner,
            child: None,
        };
        pg.start_server().await;
        let mut admin = pg.admin().await;
        sqlx::query("CREATE DATABASE parley")
            .execute(&mut admin)
            .await
            .expect("creating the database parley");
        let _ = admin.close().await;
        pg
    }

    /// The URL of database `parley`, for a client named `application_name`.
    pub fn url(&self, application_name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/parley?application_name={application_name}",
            self.port
        )
    }

    /// The URL of database `parley` through a proxy listening on `port`.
    pub fn url_via(&self, port: u16, application_name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/parley?application_name={application_name}")
    }

    /// A direct connection to database `parley` (or `postgres` before it exists).
    pub async fn admin(&self) -> PgConnection {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for db in ["parley", "postgres"] {
                let url = format!(
                    "postgres://postgres@127.0.0.1:{}/{db}?application_name=fault-test",
                    self.port
                );
                if let Ok(conn) = PgConnection::connect(&url).await {
                    return conn;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the private PostgreSQL on port {} does not answer",
                self.port
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    async fn start_server(&mut self) {
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                // No fsync: these tests crash processes, never the machine, so what was
                // written is in the page cache. Commits still wait for their WAL write.
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=32MB",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        as_owner(&mut command, self.owner);
        self.child = Some(command.spawn().expect("starting postgres"));
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let url = format!(
                "postgres://postgres@127.0.0.1:{}/postgres?application_name=fault-test",
                self.port
            );
            if let Ok(conn) = PgConnection::connect(&url).await {
                let _ = conn.close().await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private PostgreSQL on port {} did not come up within {START_TIMEOUT:?}",
                self.port
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn postmaster(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("the private PostgreSQL is running")
    }

    /// The postmaster's children: backends and background processes.
    pub fn backends(&self) -> Vec<u32> {
        children(self.postmaster())
    }

    /// `kill -9` of the postmaster and every backend, then waits until they are gone.
    pub async fn kill9(&mut self) {
        let postmaster = self.postmaster();
        let backends = children(postmaster);
        signal_tree(postmaster, "KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait().await;
        }
        // Wait until no backend is left (they hold the shared memory) before a restart.
        let deadline = Instant::now() + START_TIMEOUT;
        while backends.iter().any(|&pid| alive(pid)) {
            assert!(
                Instant::now() < deadline,
                "postgres processes survive kill -9"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the server again after [`Self::kill9`] (crash recovery runs first).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill9");
        self.start_server().await;
    }

    /// `SIGSTOP` to the postmaster and every backend: connections stay open, nothing answers.
    pub fn pause(&self) {
        signal_tree(self.postmaster(), "STOP");
    }

    pub fn resume(&self) {
        signal_tree(self.postmaster(), "CONT");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(postmaster) = self.child.as_ref().and_then(Child::id) {
            let all: Vec<u32> = std::iter::once(postmaster)
                .chain(children(postmaster))
                .collect();
            for signal in ["CONT", "KILL"] {
                for pid in &all {
                    let _ = std::process::Command::new("kill")
                        .arg(format!("-{signal}"))
                        .arg(pid.to_string())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Redis (no persistence: Parley keeps only live traffic and presence there).
pub struct PrivateRedis {
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let bin = std::env::var_os("PARLEY_REDIS_SERVER")
            .map(|p| {
                let p = PathBuf::from(p);
                assert!(
                    p.exists(),
                    "{}",
                    missing(
                        "redis-server",
                        &format!("PARLEY_REDIS_SERVER={}", p.display()),
                        "Debian/Ubuntu: apt-get install redis-server"
                    )
                );
                p
            })
            .or_else(|| {
                std::env::var_os("PATH").and_then(|path| {
                    std::env::split_paths(&path)
                        .map(|dir| dir.join("redis-server"))
                        .find(|p| p.exists())
                })
            })
            .unwrap_or_else(|| {
                panic!(
                    "{}",
                    missing(
                        "redis-server",
                        "PARLEY_REDIS_SERVER, PATH",
                        "Debian/Ubuntu: apt-get install redis-server"
                    )
                )
            });
        let mut redis = Self {
            port: free_port(),
            bin,
            child: None,
        };
        redis.start_server().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn start_server(&mut self) {
        let mut command = Command::new(&self.bin);
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        self.child = Some(command.spawn().expect("starting redis-server"));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.ping().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private Redis on port {} did not come up",
                self.port
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ping(&self) -> bool {
        let attempt = async {
            let client = redis::Client::open(self.url())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Ok(_))
        )
    }

    /// `kill -9`; waits until it is gone.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                signal_group(pid, "KILL");
            }
            let _ = child.wait().await;
        }
    }

    /// Starts it again on the same port (empty: nothing was persisted).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill9");
        self.start_server().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}
