//! Command-line interface and configuration. Every setting can also come from the
//! environment (the names in `shared/API.md`); invalid settings stop the process at start
//! with a one-line reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use parley_domain::{Role, Username, ValueError};
use parley_projections::export::ExportFormat;
use parley_projections::{EventFilter, FilterError, PROJECTIONS};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;

use crate::limits::{Budget, RateLimitConfig};

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
    Serve(Box<ServeArgs>),
    /// Apply database migrations to DATABASE_URL and exit.
    Migrate(MigrateArgs),
    /// The global event log, for analysts.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Read-model projections: checkpoints, lag and rebuilds.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// User administration.
    #[command(subcommand)]
    Users(UsersCommand),
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Write the global log in position order, one event per line (JSONL or CSV). The same
    /// range and filters always give byte-identical output; password hashes are redacted.
    Export(ExportArgs),
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Show each projection's checkpoint and lag.
    Status(DatabaseArgs),
    /// Rebuild projections in shadow tables and swap them in; reads keep being served.
    Rebuild(RebuildArgs),
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Give a user a role: analyst (reads the event log) or admin (also announces).
    Grant(GrantArgs),
    /// An erasure request: the user's username and every message text they wrote become
    /// unreadable everywhere (read models, exports, `events`, time travel); they can no
    /// longer sign in. The log keeps that they existed and wrote.
    Erase(EraseArgs),
}

/// The store an administrative command works on. Only PostgreSQL keeps anything between
/// runs, so these commands need it.
#[derive(Clone, Debug, Default, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL of the store.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl DatabaseArgs {
    /// The connection options, or why `parley <command>` cannot run.
    pub fn require(&self, command: &'static str) -> Result<PgConnectOptions, ConfigError> {
        match self.database_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => parse_database_url(url),
            None => Err(ConfigError::DatabaseRequired { command }),
        }
    }
}

#[derive(Clone, Debug, Default, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// First position to export (inclusive).
    #[arg(long, value_name = "POS", allow_negative_numbers = true)]
    pub from: Option<i64>,
    /// Last position to export (inclusive). Default: the newest position when the export
    /// starts.
    #[arg(long, value_name = "POS", allow_negative_numbers = true)]
    pub to: Option<i64>,
    /// Only events of this aggregate type: User or Room.
    #[arg(long, value_name = "T")]
    pub aggregate_type: Option<String>,
    /// Only events of this aggregate (a user or room id).
    #[arg(long, value_name = "ID")]
    pub aggregate_id: Option<String>,
    /// Only events of this type (repeat for several), e.g. MessageSent.
    #[arg(long = "event-type", value_name = "E")]
    pub event_types: Vec<String>,
    /// Output format: jsonl or csv.
    #[arg(long, value_name = "FORMAT", default_value = "jsonl")]
    pub format: String,
    /// Write to FILE (atomically: a temporary file renamed at the end) instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// A validated `parley events export`.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub database: PgConnectOptions,
    pub filter: EventFilter,
    pub format: ExportFormat,
    pub output: Option<PathBuf>,
}

impl ExportArgs {
    /// Checks the arguments before anything is connected to or created.
    pub fn validate(self) -> Result<ExportConfig, ConfigError> {
        let format = self
            .format
            .parse::<ExportFormat>()
            .map_err(|_| ConfigError::UnknownFormat(self.format.clone()))?;
        let filter = EventFilter::parse(
            self.from,
            self.to,
            self.aggregate_type.as_deref(),
            self.aggregate_id.as_deref(),
            &self.event_types,
        )?;
        if let Some(path) = &self.output {
            if path.file_name().is_none() || path.is_dir() {
                return Err(ConfigError::OutputPath(path.clone()));
            }
        }
        Ok(ExportConfig {
            database: self.database.require("events export")?,
            filter,
            format,
            output: self.output,
        })
    }
}

#[derive(Clone, Debug, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The projection to rebuild: users, rooms or messages. All of them when omitted.
    pub name: Option<String>,
}

impl RebuildArgs {
    /// The projections to rebuild (empty: all) and where.
    pub fn validate(self) -> Result<(PgConnectOptions, Vec<String>), ConfigError> {
        if let Some(name) = &self.name {
            if !PROJECTIONS.contains(&name.as_str()) {
                return Err(ConfigError::UnknownProjection(name.clone()));
            }
        }
        Ok((
            self.database.require("projections rebuild")?,
            self.name.into_iter().collect(),
        ))
    }
}

#[derive(Clone, Debug, Args)]
pub struct GrantArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The user's username.
    pub username: String,
    /// analyst or admin.
    pub role: String,
}

#[derive(Debug, Args)]
pub struct EraseArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The user's username.
    pub username: String,
}

impl EraseArgs {
    pub fn validate(self) -> Result<(PgConnectOptions, Username), ConfigError> {
        let username = Username::parse(&self.username).map_err(ConfigError::Username)?;
        Ok((self.database.require("users erase")?, username))
    }
}

impl GrantArgs {
    pub fn validate(self) -> Result<(PgConnectOptions, Username, Role), ConfigError> {
        let role = Role::parse(&self.role).ok_or(ConfigError::UnknownRole(self.role))?;
        let username = Username::parse(&self.username).map_err(ConfigError::Username)?;
        Ok((self.database.require("users grant")?, username, role))
    }
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "PARLEY_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Serve `/metrics` on this address only (e.g. one only the operators' network
    /// reaches) instead of beside the API. Unset: on the API's address.
    #[arg(long, env = "PARLEY_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,

    /// PostgreSQL URL. Unset: the embedded in-memory store (data is lost on exit).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Redis URL for relaying live events between instances. Unset: in-process relay.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Secret that signs session tokens; at least 32 bytes. Required with DATABASE_URL.
    #[arg(long, env = "PARLEY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,

    /// Largest number of pooled database connections for requests and commands (the
    /// projector has three of its own).
    #[arg(long, env = "PARLEY_DB_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,

    /// Issuer and audience of session tokens: name each deployment differently so a token
    /// of one is refused by another, even with the same secret.
    #[arg(long, env = "PARLEY_JWT_AUDIENCE", default_value = crate::auth::DEFAULT_AUDIENCE)]
    pub jwt_audience: String,

    /// Whole GraphQL requests per client IP (`N/s`, `N/min`, `N/h`, optionally `burst B`; or `off`).
    #[arg(long, env = "PARLEY_RATE_REQUESTS_PER_IP", default_value_t = RateLimitConfig::default().requests_per_ip)]
    pub rate_requests_per_ip: Budget,
    /// Password checks against one account, from anywhere.
    #[arg(long, env = "PARLEY_RATE_LOGINS_PER_ACCOUNT", default_value_t = RateLimitConfig::default().logins_per_account)]
    pub rate_logins_per_account: Budget,
    /// Password checks from one client IP.
    #[arg(long, env = "PARLEY_RATE_LOGINS_PER_IP", default_value_t = RateLimitConfig::default().logins_per_ip)]
    pub rate_logins_per_ip: Budget,
    /// Registrations from one client IP.
    #[arg(long, env = "PARLEY_RATE_REGISTRATIONS_PER_IP", default_value_t = RateLimitConfig::default().registrations_per_ip)]
    pub rate_registrations_per_ip: Budget,
    /// Messages sent by one user.
    #[arg(long, env = "PARLEY_RATE_SENDS_PER_USER", default_value_t = RateLimitConfig::default().sends_per_user)]
    pub rate_sends_per_user: Budget,
    /// Expensive reads (event log, time travel) by one user.
    #[arg(long, env = "PARLEY_RATE_EXPENSIVE_PER_USER", default_value_t = RateLimitConfig::default().expensive_per_user)]
    pub rate_expensive_per_user: Budget,
    /// Milliseconds before a refused sign-in is answered, counted from its arrival.
    #[arg(long, env = "PARLEY_LOGIN_FAILURE_DELAY_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub login_failure_delay_ms: u64,

    /// Seconds a client has to send a request's headers, from connecting or from its first
    /// byte.
    #[arg(long, env = "PARLEY_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_secs: u64,
    /// Seconds a connection may go without reading or writing anything before it is closed.
    #[arg(long, env = "PARLEY_IDLE_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout_secs: u64,
    /// Seconds a request may take from its headers to its response.
    #[arg(long, env = "PARLEY_REQUEST_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,
    /// Most open client connections (HTTP and WebSocket). Default: the open-file limit
    /// less headroom for the database, Redis and logs.
    #[arg(long, env = "PARLEY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Milliseconds a database statement may run (`statement_timeout`).
    #[arg(long, env = "PARLEY_DB_STATEMENT_TIMEOUT_MS", default_value_t = 15_000)]
    pub db_statement_timeout_ms: u64,
    /// Milliseconds a statement may wait for a lock (`lock_timeout`).
    #[arg(long, env = "PARLEY_DB_LOCK_TIMEOUT_MS", default_value_t = 5_000)]
    pub db_lock_timeout_ms: u64,
    /// Milliseconds a session may sit idle inside a transaction.
    #[arg(
        long,
        env = "PARLEY_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 15_000
    )]
    pub db_idle_in_transaction_timeout_ms: u64,
    /// Milliseconds a request waits for a pooled connection before `UNAVAILABLE`.
    #[arg(long, env = "PARLEY_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 1_500)]
    pub db_acquire_timeout_ms: u64,
}

impl Default for ServeArgs {
    fn default() -> Self {
        let limits = RateLimitConfig::default();
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_bind: None,
            database_url: None,
            redis_url: None,
            jwt_secret: None,
            db_pool_size: 16,
            jwt_audience: crate::auth::DEFAULT_AUDIENCE.to_owned(),
            rate_requests_per_ip: limits.requests_per_ip,
            rate_logins_per_account: limits.logins_per_account,
            rate_logins_per_ip: limits.logins_per_ip,
            rate_registrations_per_ip: limits.registrations_per_ip,
            rate_sends_per_user: limits.sends_per_user,
            rate_expensive_per_user: limits.expensive_per_user,
            login_failure_delay_ms: 1_000,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            request_timeout_secs: 30,
            max_connections: None,
            db_statement_timeout_ms: 15_000,
            db_lock_timeout_ms: 5_000,
            db_idle_in_transaction_timeout_ms: 15_000,
            db_acquire_timeout_ms: 1_500,
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct MigrateArgs {
    /// PostgreSQL URL to migrate.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// A configuration the server cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    DatabaseUrl(String),
    #[error(
        "REDIS_URL must be a redis:// or rediss:// URL, or several (the nodes of a Redis \
         Cluster) separated by commas (got {0:?})"
    )]
    RedisUrl(String),
    #[error(
        "PARLEY_JWT_SECRET is required when DATABASE_URL is set (tokens must outlive a restart)"
    )]
    JwtSecretMissing,
    #[error("PARLEY_JWT_SECRET must be at least {min} bytes long (got {len})")]
    JwtSecretTooShort { min: usize, len: usize },
    #[error(
        "`parley {command}` needs DATABASE_URL: the embedded in-memory store keeps no log \
         between runs"
    )]
    DatabaseRequired { command: &'static str },
    #[error("unknown export format {0:?} (expected jsonl or csv)")]
    UnknownFormat(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("--output must name a file, got {0:?}")]
    OutputPath(PathBuf),
    #[error("unknown projection {0:?} (expected users, rooms or messages)")]
    UnknownProjection(String),
    #[error("unknown role {0:?} (expected analyst or admin)")]
    UnknownRole(String),
    #[error("invalid username: {0}")]
    Username(ValueError),
    #[error("PARLEY_METRICS_BIND must differ from PARLEY_BIND ({0})")]
    MetricsBind(SocketAddr),
    #[error("PARLEY_JWT_AUDIENCE must be 1–200 visible characters")]
    Audience,
}

/// Where the server keeps its events.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    Embedded,
    Postgres {
        options: Box<PgConnectOptions>,
        pool_size: u32,
        timeouts: DbTimeouts,
    },
}

/// Time limits on the server's database sessions, so that an outage or a stuck statement
/// turns into a quick `UNAVAILABLE` instead of a hang.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbTimeouts {
    pub statement: Duration,
    pub lock: Duration,
    pub idle_in_transaction: Duration,
    /// Waiting for a pooled connection.
    pub acquire: Duration,
}

impl Default for DbTimeouts {
    fn default() -> Self {
        Self {
            statement: Duration::from_secs(15),
            lock: Duration::from_secs(5),
            idle_in_transaction: Duration::from_secs(15),
            acquire: Duration::from_millis(1500),
        }
    }
}

/// Limits on client connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time to send a request's headers; also the idle time of a keep-alive connection.
    pub header_timeout: Duration,
    /// Time from a request's headers to its response.
    pub request_timeout: Duration,
    /// A connection on which nothing was read or written for this long is closed (a
    /// WebSocket the server pings stays open; its own idle timeout applies).
    pub idle_timeout: Duration,
    /// Most open client connections; `None`: from the open-file limit.
    pub max_connections: Option<usize>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
        }
    }
}

/// Validated settings for `parley serve`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    /// `/metrics` on an address of its own; `None`: beside the API.
    pub metrics_bind: Option<SocketAddr>,
    pub store: StoreConfig,
    pub redis_url: Option<String>,
    /// `None`: generate a random secret at start (embedded mode only).
    pub jwt_secret: Option<SecretString>,
    pub jwt_audience: String,
    pub rate_limits: RateLimitConfig,
    pub http: HttpLimits,
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
                timeouts: DbTimeouts {
                    statement: Duration::from_millis(self.db_statement_timeout_ms),
                    lock: Duration::from_millis(self.db_lock_timeout_ms),
                    idle_in_transaction: Duration::from_millis(
                        self.db_idle_in_transaction_timeout_ms,
                    ),
                    acquire: Duration::from_millis(self.db_acquire_timeout_ms.max(1)),
                },
            },
        };
        let redis_url = self.redis_url.filter(|u| !u.is_empty());
        if let Some(url) = &redis_url {
            // Several comma-separated URLs: the nodes of a Redis Cluster. Each must be one.
            let valid = url
                .split(',')
                .map(str::trim)
                .all(|node| node.starts_with("redis://") || node.starts_with("rediss://"));
            if !valid {
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
        let audience = self.jwt_audience.trim().to_owned();
        if audience.is_empty() || audience.len() > 200 || audience.chars().any(|c| c.is_control()) {
            return Err(ConfigError::Audience);
        }
        // Port 0 asks for any free port: two of those never clash.
        if self.metrics_bind == Some(self.bind) && self.bind.port() != 0 {
            return Err(ConfigError::MetricsBind(self.bind));
        }
        Ok(ServerConfig {
            bind: self.bind,
            metrics_bind: self.metrics_bind,
            store,
            redis_url,
            jwt_secret,
            jwt_audience: audience,
            rate_limits: RateLimitConfig {
                requests_per_ip: self.rate_requests_per_ip,
                logins_per_account: self.rate_logins_per_account,
                logins_per_ip: self.rate_logins_per_ip,
                registrations_per_ip: self.rate_registrations_per_ip,
                sends_per_user: self.rate_sends_per_user,
                expensive_per_user: self.rate_expensive_per_user,
                failed_login_delay: Duration::from_millis(self.login_failure_delay_ms),
            },
            http: HttpLimits {
                header_timeout: Duration::from_secs(self.header_timeout_secs),
                request_timeout: Duration::from_secs(self.request_timeout_secs),
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
                max_connections: self.max_connections,
            },
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
    fn a_redis_cluster_is_several_comma_separated_urls() {
        let mut a = args();
        a.redis_url = Some("redis://127.0.0.1:7000,redis://127.0.0.1:7001".into());
        let config = a.validate().expect("a list of nodes is valid");
        assert_eq!(
            config.redis_url.as_deref(),
            Some("redis://127.0.0.1:7000,redis://127.0.0.1:7001")
        );
        let mut b = args();
        b.redis_url = Some("redis://127.0.0.1:7000,127.0.0.1:7001".into());
        assert!(matches!(b.validate(), Err(ConfigError::RedisUrl(_))));
        let mut c = args();
        c.redis_url = Some("redis://127.0.0.1:7000,".into());
        assert!(matches!(c.validate(), Err(ConfigError::RedisUrl(_))));
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

    fn export_args() -> ExportArgs {
        ExportArgs {
            database: DatabaseArgs {
                database_url: Some("postgres://postgres@127.0.0.1/parley".into()),
            },
            format: "jsonl".into(),
            ..ExportArgs::default()
        }
    }

    #[test]
    fn export_arguments_are_checked_before_anything_runs() {
        let mut a = export_args();
        a.format = "xml".into();
        assert!(matches!(a.validate(), Err(ConfigError::UnknownFormat(f)) if f == "xml"));
        let mut a = export_args();
        a.from = Some(10);
        a.to = Some(9);
        assert!(matches!(
            a.validate(),
            Err(ConfigError::Filter(FilterError::InvertedRange {
                from: 10,
                to: 9
            }))
        ));
        let mut a = export_args();
        a.aggregate_type = Some("Order".into());
        assert!(matches!(
            a.validate(),
            Err(ConfigError::Filter(FilterError::UnknownAggregateType(_)))
        ));
        let mut a = export_args();
        a.database.database_url = None;
        assert!(matches!(
            a.validate(),
            Err(ConfigError::DatabaseRequired {
                command: "events export"
            })
        ));
        let mut a = export_args();
        a.format = "csv".into();
        a.event_types = vec!["MessageSent".into()];
        let config = a.validate().unwrap();
        assert_eq!(config.format, ExportFormat::Csv);
        assert_eq!(config.filter.event_types(), ["MessageSent".to_owned()]);
    }

    #[test]
    fn a_grant_needs_a_known_role() {
        let grant = |role: &str| GrantArgs {
            database: DatabaseArgs {
                database_url: Some("postgres://postgres@127.0.0.1/parley".into()),
            },
            username: "ann".into(),
            role: role.into(),
        };
        assert!(
            matches!(grant("root").validate(), Err(ConfigError::UnknownRole(r)) if r == "root")
        );
        let (_, username, role) = grant("analyst").validate().unwrap();
        assert_eq!((username.as_str(), role), ("ann", Role::Analyst));
    }
}
