//! Building the application from validated configuration: the store (with migrations in
//! Postgres mode) and the command layer. Tests build the same `App`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::commands::CommandBus;
use crate::config::{ServerConfig, StoreConfig};
use crate::store::{EventLog, PostgresLog};

/// The SQL migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct App {
    pub commands: Arc<CommandBus>,
    pub log: EventLog,
    pub jwt_secret: Arc<SecretString>,
}

impl App {
    /// Connects to the configured store (migrating Postgres) and wires the command layer.
    pub async fn build(config: &ServerConfig) -> anyhow::Result<Self> {
        let log = match &config.store {
            StoreConfig::Embedded => {
                tracing::warn!(
                    "DATABASE_URL is not set: using the embedded in-memory store. \
                     ALL DATA IS LOST WHEN THE PROCESS EXITS."
                );
                EventLog::memory()
            }
            StoreConfig::Postgres { options, pool_size } => {
                let pool = connect((**options).clone(), *pool_size).await?;
                MIGRATOR
                    .run(&pool)
                    .await
                    .context("applying database migrations")?;
                EventLog::Postgres(PostgresLog::new(pool))
            }
        };
        let jwt_secret = match &config.jwt_secret {
            Some(secret) => secret.clone(),
            None => {
                tracing::warn!(
                    "PARLEY_JWT_SECRET is not set: using a random secret; \
                     sessions end when the process exits"
                );
                random_secret()
            }
        };
        Ok(Self::from_log(log, jwt_secret))
    }

    /// An app over an existing log (tests and tools).
    pub fn from_log(log: EventLog, jwt_secret: SecretString) -> Self {
        Self {
            commands: Arc::new(CommandBus::new(log.clone())),
            log,
            jwt_secret: Arc::new(jwt_secret),
        }
    }
}

/// Opens a pool and proves the database answers, so a bad URL fails at start.
pub async fn connect(options: PgConnectOptions, pool_size: u32) -> anyhow::Result<PgPool> {
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    );
    PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {target}"))
}

fn random_secret() -> SecretString {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 48).into()
}
