//! Shared test support: a real PostgreSQL database per test.
//!
//! Each test gets a fresh database cloned from a migrated template and dropped when the test
//! ends (also when it panics). The template is built once per migration set, across test
//! processes, under an advisory lock. If PostgreSQL cannot be reached the test fails with a
//! message that says what to start; it never passes silently.

#![allow(dead_code)]

/// `on_both_stores!(scenario, …)`: for each `async fn scenario(store: Store)` of the
/// including file, a test on PostgreSQL and one on the embedded store (`#[macro_use] mod
/// support;` and `Store` in scope).
#[allow(unused_macros)]
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                super::$scenario(super::Store::Postgres).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_the_embedded_store() {
                super::$scenario(super::Store::Memory).await;
            }
        }
    )*};
}

use std::future::Future;
use std::time::Duration;

use parley::app::MIGRATOR;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// How long a test waits for a condition before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Waits until `check` is true, failing with `what` after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The maintenance database tests connect to in order to create their own databases.
pub fn admin_url() -> String {
    std::env::var("PARLEY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn admin_options() -> PgConnectOptions {
    admin_url()
        .parse::<PgConnectOptions>()
        .expect("PARLEY_TEST_DATABASE_URL is not a valid PostgreSQL URL")
        .disable_statement_logging()
}

async fn admin_connection() -> PgConnection {
    match PgConnection::connect_with(&admin_options()).await {
        Ok(conn) => conn,
        Err(error) => panic!(
            "\n\nThese tests need PostgreSQL and could not reach it at {}: {error}\n\
             Start it (Debian/Ubuntu: `sudo apt-get install postgresql` and allow the `postgres` \
             user in; or `docker compose up -d postgres`), or point PARLEY_TEST_DATABASE_URL \
             at a server where that user may create databases.\n",
            admin_url()
        ),
    }
}

fn template_name() -> String {
    // Named after the migrations, so a changed migration builds a new template.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for migration in MIGRATOR.iter() {
        for byte in migration.checksum.iter() {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("parley_template_{hash:016x}")
}

async fn ensure_template(admin: &mut PgConnection) -> String {
    let template = template_name();
    sqlx::query("SELECT pg_advisory_lock(hashtext('parley test template'))")
        .execute(&mut *admin)
        .await
        .expect("taking the template lock");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&template)
            .fetch_one(&mut *admin)
            .await
            .expect("looking for the template database");
    if !exists {
        // Build under a temporary name and rename at the end, so a half-built template
        // (a test process killed mid-migration) is never used.
        let building = format!("{template}_building");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .execute(&mut *admin)
            .await
            .expect("dropping a stale template build");
        sqlx::query(&format!("CREATE DATABASE {building}"))
            .execute(&mut *admin)
            .await
            .expect("creating the template database");
        {
            let pool = pool_for(&building, 1).await;
            MIGRATOR.run(&pool).await.expect("migrating the template");
            pool.close().await;
        }
        sqlx::query(&format!("ALTER DATABASE {building} RENAME TO {template}"))
            .execute(&mut *admin)
            .await
            .expect("publishing the template database");
    }
    sqlx::query("SELECT pg_advisory_unlock(hashtext('parley test template'))")
        .execute(&mut *admin)
        .await
        .expect("releasing the template lock");
    template
}

async fn pool_for(database: &str, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(admin_options().database(database))
        .await
        .unwrap_or_else(|e| panic!("connecting to test database {database}: {e}"))
}

/// Whether some session holds the projector lock in `pool`'s database (one instance's
/// projector is active).
pub async fn projector_active(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks
                         WHERE locktype = 'advisory' AND granted
                           AND database = (SELECT oid FROM pg_database
                                            WHERE datname = current_database())
                           AND classid::bigint = ($1 >> 32)
                           AND objid::bigint = ($1 & 4294967295))",
    )
    .bind(parley_projections::postgres::LOCK_KEY)
    .fetch_one(pool)
    .await
    .expect("reading pg_locks")
}

/// A fresh, migrated database that is dropped when this value is.
pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A migrated database.
    pub async fn new() -> Self {
        let mut admin = admin_connection().await;
        let template = ensure_template(&mut admin).await;
        let name = format!("parley_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        let _ = admin.close().await;
        let pool = pool_for(&name, 40).await;
        Self { name, pool }
    }

    /// A database with nothing in it (to test `parley migrate`).
    pub async fn empty() -> Self {
        let mut admin = admin_connection().await;
        let name = format!("parley_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        let _ = admin.close().await;
        let pool = pool_for(&name, 4).await;
        Self { name, pool }
    }

    /// The URL of this database, for a server process.
    pub fn url(&self) -> String {
        let admin = admin_url();
        let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
        let (server, _) = base
            .rsplit_once('/')
            .expect("admin URL has a database path");
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("{server}/{}{query}", self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside the test's runtime, which must not be blocked on its own IO, so
        // the database is dropped from a thread with a runtime of its own; FORCE ends the
        // pool's connections server-side.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async move {
                let mut admin = PgConnection::connect_with(&admin_options()).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("warning: test database {} not dropped: {error}", self.name);
        }
    }
}

pub mod api;
#[macro_use]
pub mod apps;
pub mod checksums;
pub mod cluster;
pub mod instance;
pub mod load;
pub mod node;
pub mod proxy;
pub mod redis;
pub mod redis_cluster;
pub mod services;
