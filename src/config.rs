//! Command-line interface and configuration. Every setting can also come from the
//! environment (the names in `shared/API.md`); invalid settings stop the process at start
//! with a one-line reason.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;

/// Parley: an event-sourced chat server.
#[derive(Debug, Parser)]
#[command(
    name = "parley",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// With no command, `parley` serves with these settings.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no command is given).
    Serve(ServeArgs),
    /// Apply database migrations to DATABASE_URL and exit.
    Migrate(MigrateArgs),
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "PARLEY_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// PostgreSQL URL. Unset: the embedded in-memory store (data is lost on exit).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Redis URL for relaying live events between instances. Unset: in-process relay.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Secret that signs session tokens; at least 32 bytes. Required with DATABASE_URL.
    #[arg(long, env = "PARLEY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,

    /// Largest number of pooled database connections.
    #[arg(long, env = "PARLEY_DB_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,
}

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            redis_url: None,
            jwt_secret: None,
            db_pool_size: 16,
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct MigrateArgs {
    /// PostgreSQL URL to migrate.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
}

/// A configuration the server cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    DatabaseUrl(String),
    #[error("REDIS_URL must start with redis:// or rediss:// (got {0:?})")]
    RedisUrl(String),
    #[error(
        "PARLEY_JWT_SECRET is required when DATABASE_URL is set (tokens must outlive a restart)"
    )]
    JwtSecretMissing,
    #[error("PARLEY_JWT_SECRET must be at least {min} bytes long (got {len})")]
    JwtSecretTooShort { min: usize, len: usize },
}

/// Where the server keeps its events.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    Embedded,
    Postgres {
        options: Box<PgConnectOptions>,
        pool_size: u32,
    },
}

/// Validated settings for `parley serve`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub store: StoreConfig,
    pub redis_url: Option<String>,
    /// `None`: generate a random secret at start (embedded mode only).
    pub jwt_secret: Option<SecretString>,
}

pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Parses a PostgreSQL URL (`postgres://` or `postgresql://`).
pub fn parse_database_url(url: &str) -> Result<PgConnectOptions, ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::DatabaseUrl(
            "it must start with postgres:// or postgresql://".to_owned(),
        ));
    }
    url.parse::<PgConnectOptions>()
        .map_err(|e| ConfigError::DatabaseUrl(e.to_string()))
}

impl ServeArgs {
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        let store = match self.database_url.as_deref().filter(|u| !u.is_empty()) {
            None => StoreConfig::Embedded,
            Some(url) => StoreConfig::Postgres {
                options: Box::new(parse_database_url(url)?),
                pool_size: self.db_pool_size,
            },
        };
        let redis_url = self.redis_url.filter(|u| !u.is_empty());
        if let Some(url) = &redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::RedisUrl(url.clone()));
            }
        }
        let jwt_secret = self.jwt_secret.filter(|s| !s.expose_secret().is_empty());
        match (&jwt_secret, &store) {
            (None, StoreConfig::Postgres { .. }) => return Err(ConfigError::JwtSecretMissing),
            (Some(secret), _) if secret.expose_secret().len() < MIN_JWT_SECRET_BYTES => {
                return Err(ConfigError::JwtSecretTooShort {
                    min: MIN_JWT_SECRET_BYTES,
                    len: secret.expose_secret().len(),
                })
            }
            _ => {}
        }
        Ok(ServerConfig {
            bind: self.bind,
            store,
            redis_url,
            jwt_secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs::default()
    }

    #[test]
    fn no_database_url_means_embedded_mode_without_a_secret() {
        let config = args().validate().unwrap();
        assert!(matches!(config.store, StoreConfig::Embedded));
        assert!(config.jwt_secret.is_none());
    }

    #[test]
    fn a_database_url_requires_a_jwt_secret() {
        let mut a = args();
        a.database_url = Some("postgres://postgres@127.0.0.1/parley".into());
        assert!(matches!(a.validate(), Err(ConfigError::JwtSecretMissing)));
    }

    #[test]
    fn a_short_jwt_secret_is_refused() {
        let mut a = args();
        a.jwt_secret = Some("short".into());
        assert!(matches!(
            a.validate(),
            Err(ConfigError::JwtSecretTooShort { min: 32, len: 5 })
        ));
    }

    #[test]
    fn a_database_url_of_another_scheme_is_refused() {
        let mut a = args();
        a.database_url = Some("mysql://root@localhost/db".into());
        a.jwt_secret = Some("x".repeat(32).into());
        assert!(matches!(a.validate(), Err(ConfigError::DatabaseUrl(_))));
    }

    #[test]
    fn a_redis_url_of_another_scheme_is_refused() {
        let mut a = args();
        a.redis_url = Some("http://localhost:6379".into());
        assert!(matches!(a.validate(), Err(ConfigError::RedisUrl(_))));
    }

    #[test]
    fn a_full_postgres_configuration_is_accepted() {
        let mut a = args();
        a.database_url = Some("postgresql://postgres@127.0.0.1:5432/parley".into());
        a.jwt_secret = Some("s".repeat(40).into());
        a.redis_url = Some("redis://127.0.0.1:6379".into());
        let config = a.validate().unwrap();
        assert!(matches!(
            config.store,
            StoreConfig::Postgres { pool_size: 16, .. }
        ));
        assert_eq!(config.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
    }
}
