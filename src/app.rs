//! Building the application from validated configuration: the store (with migrations in
//! Postgres mode), the command layer, the read models and the projector that feeds them.
//! Tests build the same `App`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cqrs_es::persist::PersistenceError;
use parley_projections::memory::{MemoryProjector, MemoryReadModels};
use parley_projections::postgres::{PgProjector, PgReadModels, ProjectorConfig};
use parley_projections::{LiveFeed, ReadModels};
use secrecy::SecretString;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Tokens;
use crate::commands::CommandBus;
use crate::config::{DbTimeouts, ServerConfig, StoreConfig};
use crate::limits::{RateLimitConfig, RateLimits};
use crate::projected::Projected;
use crate::relay::{Presence, PresenceConfig, Relay, RelayConfig};
use crate::store::{EventLog, PostgresLog, ReadSide};
use parley_domain::UserId;

/// The SQL migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Everything a request handler needs. Cheap to clone: one reference count (handlers, the
/// GraphQL context and every socket hold a clone; cloning each part was measurable under load).
#[derive(Clone, Debug)]
pub struct App(Arc<AppParts>);

/// The parts of an [`App`], read through it (`app.commands`, `app.log`, …).
#[derive(Clone, Debug)]
pub struct AppParts {
    pub commands: Arc<CommandBus>,
    pub log: EventLog,
    pub read_models: ReadModels,
    /// Newly projected events of this instance's projector, published after they are in
    /// the read models (and relayed to every instance by [`crate::live::publish`]).
    pub live: LiveFeed,
    /// How far the read models have got (read-your-writes waits on it).
    pub projected: Projected,
    /// Live events between instances (Redis) or within this one.
    pub relay: Relay,
    /// Who is online, across instances.
    pub presence: Presence,
    /// Who this instance saw typing (to send "stopped typing" when they send).
    pub typing: Arc<crate::live::TypingTracker>,
    /// The room subscriptions this instance serves, by room.
    pub feeds: Arc<crate::live::OpenFeeds>,
    pub tokens: Tokens,
    /// Budgets per IP, account and user (see [`crate::limits`]).
    pub limits: Arc<RateLimits>,
    /// Users known to exist here, with when that was last read from the store (a token's
    /// subject is checked against it, then the store).
    known_users: Arc<std::sync::Mutex<lru::LruCache<UserId, std::time::Instant>>>,
    background: Background,
    /// Open WebSockets, closed cleanly (1001) at shutdown.
    pub sockets: Sockets,
}

/// How the parts of an [`App`] are set up.
#[derive(Clone, Debug)]
pub struct AppOptions {
    pub projector: ProjectorConfig,
    pub relay: Relay,
    pub presence: Presence,
}

impl AppOptions {
    /// One instance on its own: in-process relay and presence.
    pub fn local(projector: ProjectorConfig) -> Self {
        Self {
            projector,
            relay: Relay::in_process(RelayConfig::default())
                .expect("the default relay configuration is valid"),
            presence: Presence::in_memory(PresenceConfig::default())
                .expect("the default presence configuration is valid"),
        }
    }
}

/// The WebSockets an instance serves, and the signal that closes them: hyper's graceful
/// shutdown does not follow a connection once it is upgraded, so this does.
#[derive(Clone, Debug, Default)]
pub struct Sockets {
    closing: CancellationToken,
    open: TaskTracker,
}

impl Sockets {
    /// Runs one socket's work, counted until it ends.
    pub fn track<F: std::future::Future>(
        &self,
        socket: F,
    ) -> tokio_util::task::task_tracker::TrackedFuture<F> {
        self.open.track_future(socket)
    }

    /// Completes when the sockets are asked to close.
    pub fn closing(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.closing.clone().cancelled_owned()
    }

    /// Asks every socket, open or still to come, to close with 1001 "going away".
    pub fn close_all(&self) {
        self.closing.cancel();
    }

    /// Waits (at most `grace`) until every socket has closed; how many were still open.
    pub async fn closed(&self, grace: std::time::Duration) -> usize {
        self.open.close();
        let _ = tokio::time::timeout(grace, self.open.wait()).await;
        self.open.len()
    }

    /// Sockets open now.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

/// Background tasks (the projector) and the signal that stops them.
#[derive(Clone, Debug)]
struct Background {
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Cancels `stop` when the last clone of the app is gone, so the projector's own thread
    /// (which outlives any runtime) ends with the app even when it is never stopped.
    _ends_with_app: Arc<tokio_util::sync::DropGuard>,
}

/// Connections of the projector's own pool: its session, its listener, and a spare.
const PROJECTOR_CONNECTIONS: u32 = 3;

/// Runs the PostgreSQL projector on a thread of its own, with a runtime and a pool of its
/// own, until `stop` is cancelled; `tasks` tracks it (so [`App::stop`] waits for it).
///
/// Why not a task among the others: every step of the projector is a handful of round trips
/// to PostgreSQL, and on a runtime busy with requests each of them waits behind the queued
/// request tasks, so under load the projector fell behind by tens of milliseconds, and live
/// delivery (which follows it) with it. On its own thread the operating system shares the
/// cores between it and the request workers instead (README, "Measured").
fn spawn_projector(
    server_pool: &PgPool,
    live: LiveFeed,
    config: ProjectorConfig,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    let options = (*server_pool.connect_options()).clone();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("parley-projector".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "cannot start the projector's runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                // Connections are opened here, on this runtime, as the projector needs them.
                let pool = PgPoolOptions::new()
                    .max_connections(PROJECTOR_CONNECTIONS)
                    .connect_lazy_with(options);
                PgProjector::new(pool, live, config)
                    .run(stop.cancelled_owned())
                    .await;
            });
            drop(done);
        });
    match spawned {
        Ok(_) => {
            tasks.spawn(async move {
                // Resolves (with an error: nothing is sent) when the thread has finished.
                let _ = finished.await;
            });
        }
        Err(error) => tracing::error!(%error, "cannot start the projector's thread"),
    }
}

impl std::ops::Deref for App {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

impl App {
    /// Connects to the configured store (migrating Postgres), wires the command layer and
    /// starts the projector.
    pub async fn build(config: &ServerConfig) -> anyhow::Result<Self> {
        let log = match &config.store {
            StoreConfig::Embedded => {
                tracing::warn!(
                    "DATABASE_URL is not set: using the embedded in-memory store. \
                     ALL DATA IS LOST WHEN THE PROCESS EXITS."
                );
                EventLog::memory()
            }
            StoreConfig::Postgres {
                options,
                pool_size,
                timeouts,
            } => {
                let pool = connect_server((**options).clone(), *pool_size, timeouts).await?;
                MIGRATOR
                    .run(&pool)
                    .await
                    .context("applying database migrations")?;
                EventLog::postgres(PostgresLog::new(pool))
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
        let redis_url = config.redis_url.as_deref();
        let relay = Relay::from_url(redis_url, RelayConfig::default())
            .await
            .context("connecting the live relay to Redis")?;
        let presence = Presence::from_url(redis_url, PresenceConfig::default())
            .await
            .context("connecting presence to Redis")?;
        let options = AppOptions {
            projector: ProjectorConfig::default(),
            relay,
            presence,
        };
        let app = Self::start_with(log, jwt_secret, options).with_rate_limits(&config.rate_limits);
        let mut parts = Arc::unwrap_or_clone(app.0);
        parts.tokens = parts.tokens.for_audience(config.jwt_audience.clone());
        Ok(Self(Arc::new(parts)))
    }

    /// An app over an existing log on its own (in-process relay), its projector running.
    pub fn start(log: EventLog, jwt_secret: SecretString, projector: ProjectorConfig) -> Self {
        Self::start_with(log, jwt_secret, AppOptions::local(projector))
    }

    /// An app over an existing log with the given parts, its background tasks running.
    pub fn start_with(log: EventLog, jwt_secret: SecretString, options: AppOptions) -> Self {
        let AppOptions {
            projector,
            relay,
            presence,
        } = options;
        let live = LiveFeed::new();
        let stop_token = CancellationToken::new();
        let background = Background {
            _ends_with_app: Arc::new(stop_token.clone().drop_guard()),
            stop: stop_token,
            tasks: TaskTracker::new(),
        };
        let stop = || background.stop.clone().cancelled_owned();
        // The one choice of backend: the read side lives in the log's store.
        let (read_models, projected) = match log.read_side() {
            ReadSide::Postgres(pool) => {
                let (projected, follow) = Projected::postgres(pool.clone(), stop());
                background.tasks.spawn(follow);
                spawn_projector(
                    &pool,
                    live.clone(),
                    projector,
                    background.stop.clone(),
                    &background.tasks,
                );
                (ReadModels::postgres(PgReadModels::new(pool)), projected)
            }
            ReadSide::Embedded(embedded) => {
                let (projected, follow) = Projected::embedded(&live, stop());
                background.tasks.spawn(follow);
                let models = Arc::new(MemoryReadModels::default());
                let projector = MemoryProjector::new(embedded, models.clone(), live.clone());
                background.tasks.spawn(projector.run(stop()));
                (ReadModels::memory(models), projected)
            }
        };
        background.tasks.spawn(crate::live::publish(
            live.clone(),
            relay.clone(),
            read_models.clone(),
            background.stop.clone().cancelled_owned(),
        ));
        Self(Arc::new(AppParts {
            commands: Arc::new(CommandBus::new(log.clone())),
            log,
            read_models,
            live,
            projected,
            relay,
            presence,
            typing: Arc::default(),
            feeds: Arc::default(),
            tokens: Tokens::new(&jwt_secret),
            limits: Arc::default(),
            known_users: Arc::new(std::sync::Mutex::new(lru::LruCache::new(
                KNOWN_USERS_CACHED,
            ))),
            background,
            sockets: Sockets::default(),
        }))
    }

    /// This app with other rate limits.
    pub fn with_rate_limits(self, config: &RateLimitConfig) -> Self {
        let mut parts = Arc::unwrap_or_clone(self.0);
        parts.limits = Arc::new(RateLimits::new(config));
        Self(Arc::new(parts))
    }

    /// Whether `user` is registered here and not erased: from a cache of users seen in the
    /// last [`KNOWN_USER_TTL`], else the store's index (so a user who registered a moment ago
    /// is known before the read models are). An erased user's tokens stop working at once on
    /// the instance that erased them ([`Self::forget_user`]), within the TTL on the others.
    pub async fn user_exists(&self, user: UserId) -> Result<bool, PersistenceError> {
        if self
            .known_users
            .lock()
            .map(|mut c| {
                c.get(&user)
                    .is_some_and(|seen| seen.elapsed() < KNOWN_USER_TTL)
            })
            .unwrap_or(false)
        {
            return Ok(true);
        }
        let exists = self.log.user_exists(user).await?;
        if exists {
            if let Ok(mut cache) = self.known_users.lock() {
                cache.put(user, std::time::Instant::now());
            }
        }
        Ok(exists)
    }

    /// Drops `user` from the cache of known users (they were just erased).
    pub fn forget_user(&self, user: UserId) {
        if let Ok(mut cache) = self.known_users.lock() {
            cache.pop(&user);
        }
    }

    /// Stops the background tasks and waits for them to finish.
    pub async fn stop(&self) {
        self.background.stop.cancel();
        self.background.tasks.close();
        self.background.tasks.wait().await;
    }

    /// Completes when [`App::stop`] is called (for tasks tied to the app's life).
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.background.stop.clone().cancelled_owned()
    }
}

/// How long the token check trusts that a user it saw still exists (an erasure on another
/// instance takes effect here within this).
const KNOWN_USER_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// How many known users the token check remembers.
const KNOWN_USERS_CACHED: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(100_000) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};

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

/// The server's pool: [`connect`] with time limits on every session and a short wait for
/// a connection, so an outage is a quick `UNAVAILABLE`.
pub async fn connect_server(
    options: PgConnectOptions,
    pool_size: u32,
    timeouts: &DbTimeouts,
) -> anyhow::Result<PgPool> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let options = options.options([
        ("statement_timeout", ms(timeouts.statement)),
        ("lock_timeout", ms(timeouts.lock)),
        (
            "idle_in_transaction_session_timeout",
            ms(timeouts.idle_in_transaction),
        ),
    ]);
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    );
    PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(timeouts.acquire)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {target}"))
}

fn random_secret() -> SecretString {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 48).into()
}
