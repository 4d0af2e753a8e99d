//! Who is online, across instances. Presence is ephemeral: never an event, only heartbeats
//! that expire.
//!
//! Each live client connection (a WebSocket, say) calls [`Presence::heartbeat`] well within
//! the TTL (e.g. every TTL/3) and [`Presence::disconnect`] when it closes cleanly. A user is
//! online while at least one of their connections has a fresh heartbeat, so a second device
//! keeps them online and a crashed instance's connections time out by themselves.
//!
//! In Redis: `{prefix}:presence:{{user}}:{connection}` is a string key with the TTL (the
//! heartbeat itself), and `{prefix}:presence:{{user}}` is the set of that user's connection
//! ids, whose TTL is refreshed by every heartbeat so it outlives the last connection by at most
//! one TTL. Queries read the sets and then the connection keys (two round trips for any number
//! of users; no KEYS or SCAN) and remove members whose key has expired.
//!
//! The user id is the keys' hash tag (`{…}`): in a Redis Cluster all keys of one user live in
//! one slot, so a heartbeat's pipeline and the `MGET` of a user's connections are single-slot
//! operations. In a cluster a query runs those two round trips per user, all users at once
//! (one slot each); on a single server, for all users together.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use parley_domain::UserId;
use tokio::time::Instant;

use super::redis_link::{self, with_timeout, Link};
use super::{validate_prefix, RelayError};

/// Settings of a [`Presence`].
#[derive(Clone, Debug)]
pub struct PresenceConfig {
    /// Key namespace (see [`super::RelayConfig::prefix`]).
    pub prefix: String,
    /// How long a heartbeat keeps a connection alive. Heartbeat well within it.
    pub ttl: Duration,
    /// Longest wait for one Redis operation.
    pub timeout: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            prefix: "parley".to_owned(),
            ttl: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
        }
    }
}

impl PresenceConfig {
    fn validate(&self) -> Result<(), RelayError> {
        validate_prefix(&self.prefix)?;
        if self.ttl < Duration::from_millis(1) {
            return Err(RelayError::Config(
                "presence TTL must be at least 1 ms".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Where presence is kept: the port, in this process or in Redis.
#[async_trait]
trait PresenceStore: Send + Sync {
    /// The backend's name, for logs.
    fn kind(&self) -> &'static str;

    /// How long one heartbeat keeps a connection online.
    fn ttl(&self) -> Duration;

    async fn heartbeat(&self, user: UserId, connection_id: &str) -> Result<(), RelayError>;

    async fn disconnect(&self, user: UserId, connection_id: &str) -> Result<(), RelayError>;

    async fn online_among(&self, users: &[UserId]) -> Result<HashSet<UserId>, RelayError>;
}

/// Online status of users. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Presence(Arc<dyn PresenceStore>);

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presence")
            .field("kind", &self.0.kind())
            .field("ttl", &self.ttl())
            .finish_non_exhaustive()
    }
}

impl Presence {
    /// Presence kept in this process (one instance, no Redis).
    pub fn in_memory(config: PresenceConfig) -> Result<Self, RelayError> {
        config.validate()?;
        Ok(Self(Arc::new(MemoryPresence {
            ttl: config.ttl,
            state: Mutex::new(MemoryState {
                users: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        })))
    }

    /// Presence in the Redis at `url`, shared by every instance using the same prefix.
    pub async fn redis(url: &str, config: PresenceConfig) -> Result<Self, RelayError> {
        config.validate()?;
        let conn = redis_link::connect_plain(url, config.timeout).await?;
        Ok(Self(Arc::new(RedisPresence {
            conn,
            prefix: config.prefix,
            ttl: config.ttl,
            timeout: config.timeout,
        })))
    }

    /// The Redis presence when `redis_url` is set, else the in-memory one.
    pub async fn from_url(
        redis_url: Option<&str>,
        config: PresenceConfig,
    ) -> Result<Self, RelayError> {
        match redis_url {
            Some(url) => Self::redis(url, config).await,
            None => Self::in_memory(config),
        }
    }

    /// How long one heartbeat keeps a connection online.
    pub fn ttl(&self) -> Duration {
        self.0.ttl()
    }

    /// Marks `connection_id` of `user` alive for one TTL from now.
    pub async fn heartbeat(&self, user: UserId, connection_id: &str) -> Result<(), RelayError> {
        self.0.heartbeat(user, connection_id).await
    }

    /// Forgets `connection_id` of `user` now (the connection closed cleanly).
    pub async fn disconnect(&self, user: UserId, connection_id: &str) -> Result<(), RelayError> {
        self.0.disconnect(user, connection_id).await
    }

    /// Whether any connection of `user` has a fresh heartbeat.
    pub async fn is_online(&self, user: UserId) -> Result<bool, RelayError> {
        Ok(self.online_among(&[user]).await?.contains(&user))
    }

    /// The users among `users` that are online.
    pub async fn online_among(&self, users: &[UserId]) -> Result<HashSet<UserId>, RelayError> {
        self.0.online_among(users).await
    }
}

struct MemoryPresence {
    ttl: Duration,
    state: Mutex<MemoryState>,
}

struct MemoryState {
    /// Per user, per connection: when its last heartbeat expires.
    users: HashMap<UserId, HashMap<String, Instant>>,
    last_sweep: Instant,
}

impl MemoryPresence {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn heartbeat(&self, user: UserId, connection_id: &str) {
        let now = Instant::now();
        let mut state = self.lock();
        state
            .users
            .entry(user)
            .or_default()
            .insert(connection_id.to_owned(), now + self.ttl);
        // Forget users whose every heartbeat expired, at most once per TTL.
        if now.duration_since(state.last_sweep) >= self.ttl {
            state.last_sweep = now;
            state.users.retain(|_, connections| {
                connections.retain(|_, expires| *expires > now);
                !connections.is_empty()
            });
        }
    }

    fn disconnect(&self, user: UserId, connection_id: &str) {
        let mut state = self.lock();
        if let Some(connections) = state.users.get_mut(&user) {
            connections.remove(connection_id);
            if connections.is_empty() {
                state.users.remove(&user);
            }
        }
    }

    fn online_among(&self, users: &[UserId]) -> HashSet<UserId> {
        let now = Instant::now();
        let state = self.lock();
        users
            .iter()
            .filter(|user| {
                state
                    .users
                    .get(user)
                    .is_some_and(|connections| connections.values().any(|expires| *expires > now))
            })
            .copied()
            .collect()
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn heartbeat(&self, user: UserId, connection_id: &str) -> Result<(), RelayError> {
        MemoryPresence::heartbeat(self, user, connection_id);
        Ok(())
    }

    async fn disconnect(&self, user: UserId, connection_id: &str) -> Result<(), RelayError> {
        MemoryPresence::disconnect(self, user, connection_id);
        Ok(())
    }

    async fn online_among(&self, users: &[UserId]) -> Result<HashSet<UserId>, RelayError> {
        Ok(MemoryPresence::online_among(self, users))
    }
}

struct RedisPresence {
    conn: Link,
    prefix: String,
    ttl: Duration,
    timeout: Duration,
}

impl RedisPresence {
    /// `{prefix}:presence:{<user>}`: the user id is the hash tag.
    fn set_key(&self, user: UserId) -> String {
        format!("{}:presence:{{{user}}}", self.prefix)
    }

    /// `{prefix}:presence:{<user>}:{connection}`: same hash tag, same slot as the set.
    fn connection_key(&self, user: UserId, connection_id: &str) -> String {
        format!("{}:presence:{{{user}}}:{connection_id}", self.prefix)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// [`Self::online_among`] for distinct `users` whose keys one connection can read in one
    /// `MGET`: all users on a single server, or one user (one slot) in a cluster.
    async fn online_in_one_slot_or_server(
        &self,
        users: &[UserId],
    ) -> Result<HashSet<UserId>, RelayError> {
        let mut conn = self.conn.clone();

        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("SMEMBERS").arg(self.set_key(*user));
        }
        let members: Vec<Vec<String>> =
            with_timeout(self.timeout, pipe.query_async(&mut conn)).await?;

        let candidates: Vec<(UserId, String)> = users
            .iter()
            .zip(members)
            .flat_map(|(user, connections)| connections.into_iter().map(move |c| (*user, c)))
            .collect();
        if candidates.is_empty() {
            return Ok(HashSet::new());
        }
        let mut mget = redis::cmd("MGET");
        for (user, connection_id) in &candidates {
            mget.arg(self.connection_key(*user, connection_id));
        }
        let alive: Vec<Option<String>> =
            with_timeout(self.timeout, mget.query_async(&mut conn)).await?;

        let mut online = HashSet::new();
        let mut cleanup = redis::pipe();
        let mut stale = 0usize;
        for ((user, connection_id), value) in candidates.iter().zip(alive) {
            if value.is_some() {
                online.insert(*user);
            } else {
                stale += 1;
                cleanup
                    .cmd("SREM")
                    .arg(self.set_key(*user))
                    .arg(connection_id)
                    .ignore();
            }
        }
        if stale > 0 {
            // Best effort: a failure leaves members that the next query removes. A heartbeat
            // racing this SREM is lost from the set until that connection's next heartbeat.
            if let Err(error) = with_timeout(self.timeout, cleanup.exec_async(&mut conn)).await {
                tracing::debug!(%error, stale, "presence: could not remove expired connections");
            }
        }
        Ok(online)
    }
}

#[async_trait]
impl PresenceStore for RedisPresence {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn heartbeat(&self, user: UserId, connection_id: &str) -> Result<(), RelayError> {
        let ttl = self.ttl_ms();
        let set_key = self.set_key(user);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.connection_key(user, connection_id))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .ignore();
        pipe.cmd("SADD").arg(&set_key).arg(connection_id).ignore();
        pipe.cmd("PEXPIRE").arg(&set_key).arg(ttl).ignore();
        let mut conn = self.conn.clone();
        with_timeout(self.timeout, pipe.exec_async(&mut conn)).await
    }

    async fn disconnect(&self, user: UserId, connection_id: &str) -> Result<(), RelayError> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.connection_key(user, connection_id))
            .ignore();
        pipe.cmd("SREM")
            .arg(self.set_key(user))
            .arg(connection_id)
            .ignore();
        let mut conn = self.conn.clone();
        with_timeout(self.timeout, pipe.exec_async(&mut conn)).await
    }

    async fn online_among(&self, users: &[UserId]) -> Result<HashSet<UserId>, RelayError> {
        let mut seen = HashSet::new();
        let users: Vec<UserId> = users.iter().copied().filter(|u| seen.insert(*u)).collect();
        if users.is_empty() {
            return Ok(HashSet::new());
        }
        if !self.conn.is_cluster() {
            return self.online_in_one_slot_or_server(&users).await;
        }
        let queries = users
            .chunks(1)
            .map(|user| self.online_in_one_slot_or_server(user));
        let mut online = HashSet::new();
        for result in futures::future::join_all(queries).await {
            online.extend(result?);
        }
        Ok(online)
    }
}
