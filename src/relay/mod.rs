//! Live events between server instances, and who is online.
//!
//! Parley's durable truth is the event log; what a client sees *live* (new messages, typing,
//! presence changes) must still reach it when it is connected to another instance than the
//! one that handled the write. This module is that live path:
//!
//! - [`Relay`]: publish a JSON payload on a [`Channel`] (a room, a user, or every instance)
//!   and subscribe to it. With `REDIS_URL` set it is Redis pub/sub shared by all instances;
//!   without, an in-process broadcast serves the single instance. An instance subscribes a
//!   Redis channel only while it has local subscribers to it (reference counted), so the
//!   Redis traffic of an instance follows what its clients watch.
//! - Delivery is best effort by design: a message can be lost while the Redis connection is
//!   down, or skipped when a subscriber reads too slowly. The subscriber is then told so
//!   ([`RelayItem::Resync`], [`RelayItem::Lagged`]) and re-reads from its cursor in the read
//!   model, which is always complete (the projector publishes only after its commit).
//! - [`Presence`]: per-connection heartbeats with a TTL, so a user is online while any of
//!   their connections, on any instance, is alive.
//!
//! A Redis outage never panics or stops the server: `publish` and `ping` return errors, and
//! subscriptions get `Resync` once Redis is back and they are subscribed again.

mod hub;
mod presence;
mod redis_link;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parley_domain::{RoomId, UserId};
use rand::Rng;
use serde_json::Value;
use tokio::sync::broadcast;

use hub::{Counters, Hub, Item};
use redis_link::LinkTask;

pub use presence::{Presence, PresenceConfig};

/// Where a live event goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Everyone watching a room: messages, typing, notices.
    Room(RoomId),
    /// Everything for one user, on every device (e.g. "you were invited").
    User(UserId),
    /// Every instance (e.g. configuration or presence fan-out).
    Broadcast,
}

impl Channel {
    /// The channel's name under `prefix`: `{prefix}:room:{uuid}`, `{prefix}:user:{uuid}` or
    /// `{prefix}:broadcast`. This is the Redis pub/sub channel name.
    pub fn name(&self, prefix: &str) -> String {
        match self {
            Channel::Room(room) => format!("{prefix}:room:{room}"),
            Channel::User(user) => format!("{prefix}:user:{user}"),
            Channel::Broadcast => format!("{prefix}:broadcast"),
        }
    }
}

/// Why a relay or presence operation failed. None of these is fatal to the server.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A subscription could not be confirmed by Redis in time.
    #[error(
        "redis did not confirm the subscription within {timeout:?} (last error: {last_error})"
    )]
    SubscribeTimeout {
        /// How long `subscribe` waited.
        timeout: Duration,
        /// The last error the relay saw from Redis, or "none".
        last_error: String,
    },
    /// The payload could not be serialized.
    #[error("payload is not serializable: {0}")]
    Payload(#[from] serde_json::Error),
    /// The configuration is unusable (e.g. an empty prefix).
    #[error("invalid relay configuration: {0}")]
    Config(String),
    /// The relay's internals went away (only while the process shuts down).
    #[error("the relay is closed")]
    Closed,
}

/// Settings of a [`Relay`].
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Namespace of channel names (and of the Redis client name): `parley` in production,
    /// a random one per test so tests sharing a Redis do not see each other. Printable ASCII,
    /// no spaces.
    pub prefix: String,
    /// Capacity of each channel's local buffer. A subscriber that falls further behind than
    /// this gets [`RelayItem::Lagged`] instead of the messages it missed.
    pub buffer: usize,
    /// Longest wait for one Redis operation (publish, ping, confirming a subscription).
    pub timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            prefix: "parley".to_owned(),
            buffer: 256,
            timeout: Duration::from_secs(2),
        }
    }
}

impl RelayConfig {
    /// The defaults with another prefix.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }
}

/// Checks a key/channel prefix: non-empty printable ASCII without spaces.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), RelayError> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RelayError::Config(format!(
            "prefix must be non-empty printable ASCII without spaces (got {prefix:?})"
        )));
    }
    Ok(())
}

/// One relayed payload, shared by all of an instance's subscribers to its channel: parsed
/// from Redis once, kept in one allocation, and decoded into a typed event at most once
/// (by the first subscriber that asks), however many subscribers read it.
#[derive(Clone)]
pub struct Relayed(Arc<RelayedPayload>);

struct RelayedPayload {
    value: Value,
    decoded: std::sync::OnceLock<Option<Box<dyn std::any::Any + Send + Sync>>>,
}

impl Relayed {
    pub fn new(value: Value) -> Self {
        Self(Arc::new(RelayedPayload {
            value,
            decoded: std::sync::OnceLock::new(),
        }))
    }

    /// The payload as published.
    pub fn value(&self) -> &Value {
        &self.0.value
    }

    /// The payload as a `T`, decoded once and shared; `None` if it is not a `T` (logged
    /// once). A channel's payloads are read as one type: asking for another gives `None`.
    pub fn decoded<T>(&self) -> Option<&T>
    where
        T: serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        self.0
            .decoded
            .get_or_init(|| match T::deserialize(&self.0.value) {
                Ok(decoded) => Some(Box::new(decoded)),
                Err(error) => {
                    tracing::warn!(%error, "ignoring an unreadable live event");
                    None
                }
            })
            .as_ref()?
            .downcast_ref::<T>()
    }
}

impl From<Value> for Relayed {
    fn from(value: Value) -> Self {
        Self::new(value)
    }
}

impl PartialEq for Relayed {
    fn eq(&self, other: &Self) -> bool {
        self.value() == other.value()
    }
}

impl fmt::Debug for Relayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value().fmt(f)
    }
}

/// One item of a [`Subscription`].
#[derive(Clone, Debug, PartialEq)]
pub enum RelayItem {
    /// A published payload, in publish order (per publisher), at most once.
    Message(Relayed),
    /// The Redis connection was lost and is back, and this channel is subscribed again.
    /// Messages published meanwhile may be lost: re-read from your cursor (the read model),
    /// then go on; messages after this item are delivered again. Messages received before it
    /// remain valid, and later ones may repeat what the re-read returns (drop them by `seq`).
    Resync,
    /// This subscriber read too slowly and this many messages were dropped from its buffer.
    /// Same remedy as [`RelayItem::Resync`]; what follows are the newest buffered messages.
    Lagged(u64),
}

/// Counters of one relay since it started, for measurement (e.g. Redis commands per
/// delivered message = `redis_commands() / deliveries`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Successful `publish` calls.
    pub published: u64,
    /// Failed `publish` calls.
    pub publish_errors: u64,
    /// PUBLISH commands sent to Redis (0 for the in-process relay).
    pub publish_commands: u64,
    /// SUBSCRIBE commands sent to Redis, one channel each (resubscriptions included).
    pub subscribe_commands: u64,
    /// UNSUBSCRIBE commands sent to Redis, one channel each.
    pub unsubscribe_commands: u64,
    /// Messages that reached this instance (from Redis, or published in-process).
    pub received: u64,
    /// Message copies handed to local subscriptions (one message, three subscribers: 3).
    pub deliveries: u64,
    /// Lost Redis connections.
    pub disconnects: u64,
    /// `Resync` items handed to channels (one per channel with subscribers per recovery).
    pub resyncs: u64,
    /// Messages skipped by slow subscribers (sum of `Lagged` counts).
    pub lagged: u64,
    /// Received payloads that were not JSON (dropped).
    pub malformed: u64,
}

impl RelayStats {
    /// PUBLISH + SUBSCRIBE + UNSUBSCRIBE commands sent to Redis.
    pub fn redis_commands(&self) -> u64 {
        self.publish_commands + self.subscribe_commands + self.unsubscribe_commands
    }
}

/// Which implementation a [`Relay`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayKind {
    /// Tokio broadcast inside this process (no `REDIS_URL`; one instance).
    InProcess,
    /// Redis pub/sub (many instances).
    Redis,
    /// Redis Cluster sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`, one channel per room, each
    /// on the shard owning its slot): `REDIS_URL` lists several nodes, comma-separated.
    RedisCluster,
}

/// How published events leave this instance: the relay's port. The hub (local
/// subscribers, counters) is the same for every transport.
#[async_trait]
trait Transport: Send + Sync {
    fn kind(&self) -> RelayKind;

    /// The Redis client name of the relay's connection, if it has one.
    fn client_name(&self) -> Option<&str>;

    /// Sends each payload to its channel (a full name), in order, in one round trip.
    async fn publish_all(&self, items: &[(String, &Value)]) -> Result<(), RelayError>;

    async fn ping(&self) -> Result<(), RelayError>;
}

/// One instance: published events go straight to the local subscribers.
struct InProcess {
    hub: Arc<Hub>,
}

#[async_trait]
impl Transport for InProcess {
    fn kind(&self) -> RelayKind {
        RelayKind::InProcess
    }

    fn client_name(&self) -> Option<&str> {
        None
    }

    async fn publish_all(&self, items: &[(String, &Value)]) -> Result<(), RelayError> {
        for (name, payload) in items {
            self.hub.dispatch(name, Relayed::new((*payload).clone()));
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), RelayError> {
        Ok(())
    }
}

/// Redis pub/sub (or a Redis Cluster's sharded pub/sub): every instance's link task hands
/// what Redis delivers to its hub.
struct RedisTransport {
    conn: redis_link::Link,
    client_name: String,
    timeout: Duration,
    hub: Arc<Hub>,
    _link: LinkTask,
}

#[async_trait]
impl Transport for RedisTransport {
    fn kind(&self) -> RelayKind {
        if self.conn.is_cluster() {
            RelayKind::RedisCluster
        } else {
            RelayKind::Redis
        }
    }

    fn client_name(&self) -> Option<&str> {
        Some(&self.client_name)
    }

    async fn publish_all(&self, items: &[(String, &Value)]) -> Result<(), RelayError> {
        // A cluster pipeline must stay on one slot, and each room is its own slot: one
        // pipeline per channel there (keeping that channel's order), all channels' pipelines
        // in flight at once, each sent to the channel's shard. On one server, one pipeline.
        let mut pipes: Vec<redis::Pipeline> = Vec::new();
        let mut index: std::collections::HashMap<&str, usize> = Default::default();
        let per_channel = self.conn.is_cluster();
        for (name, payload) in items {
            let text = serde_json::to_string(payload)?;
            let key = if per_channel { name.as_str() } else { "" };
            let at = *index.entry(key).or_insert_with(|| {
                pipes.push(redis::pipe());
                pipes.len() - 1
            });
            pipes[at]
                .cmd(self.conn.publish_command())
                .arg(name)
                .arg(text)
                .ignore();
        }
        Counters::add(&self.hub.counters.publish_commands, items.len() as u64);
        let sends = pipes.into_iter().map(|pipe| {
            let mut conn = self.conn.clone();
            async move { pipe.exec_async(&mut conn).await }
        });
        let all = futures::future::join_all(sends);
        redis_link::with_timeout(self.timeout, async {
            all.await.into_iter().collect::<redis::RedisResult<()>>()
        })
        .await
    }

    async fn ping(&self) -> Result<(), RelayError> {
        self.conn.ping(self.timeout).await
    }
}

struct Shared {
    prefix: String,
    timeout: Duration,
    hub: Arc<Hub>,
    transport: Box<dyn Transport>,
}

/// Publishes and subscribes live events. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Relay(Arc<Shared>);

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("kind", &self.kind())
            .field("prefix", &self.0.prefix)
            .field("client_name", &self.client_name())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// The in-process relay: one instance, no Redis.
    pub fn in_process(config: RelayConfig) -> Result<Self, RelayError> {
        validate_prefix(&config.prefix)?;
        let hub = Arc::new(Hub::new(config.buffer, false));
        Ok(Self(Arc::new(Shared {
            prefix: config.prefix,
            timeout: config.timeout,
            hub: hub.clone(),
            transport: Box::new(InProcess { hub }),
        })))
    }

    /// The Redis relay at `url` (`redis://…` or `rediss://…`), or over a Redis Cluster when
    /// `url` lists several nodes, comma-separated (`redis://a:7000,redis://b:7001,…`). Fails
    /// when Redis cannot be reached now; once connected, outages are survived (see the
    /// module docs).
    pub async fn redis(url: &str, config: RelayConfig) -> Result<Self, RelayError> {
        validate_prefix(&config.prefix)?;
        let hub = Arc::new(Hub::new(config.buffer, true));
        let unsubscribing = Arc::new(redis_link::Unsubscribing::default());
        let conn =
            redis_link::connect(url, hub.clone(), unsubscribing.clone(), config.timeout).await?;
        let suffix: u32 = rand::rng().random();
        let client_name = format!("parley-relay-{}-{suffix:08x}", config.prefix);
        let link = redis_link::spawn_link(
            hub.clone(),
            conn.clone(),
            unsubscribing,
            client_name.clone(),
            config.timeout,
        );
        // Name the connection now (the link task does it after every reconnection).
        hub.wake.notify_one();
        Ok(Self(Arc::new(Shared {
            prefix: config.prefix,
            timeout: config.timeout,
            hub: hub.clone(),
            transport: Box::new(RedisTransport {
                conn,
                client_name,
                timeout: config.timeout,
                hub,
                _link: link,
            }),
        })))
    }

    /// The Redis relay when `redis_url` is set, else the in-process one.
    pub async fn from_url(
        redis_url: Option<&str>,
        config: RelayConfig,
    ) -> Result<Self, RelayError> {
        match redis_url {
            Some(url) => Self::redis(url, config).await,
            None => Self::in_process(config),
        }
    }

    /// Which implementation this is.
    pub fn kind(&self) -> RelayKind {
        self.0.transport.kind()
    }

    /// The channel-name prefix.
    pub fn prefix(&self) -> &str {
        &self.0.prefix
    }

    /// The full name of `channel` for this relay (its Redis channel name).
    pub fn channel_name(&self, channel: &Channel) -> String {
        channel.name(&self.0.prefix)
    }

    /// The Redis client name (`CLIENT SETNAME`) of this relay's connection, unique per relay:
    /// `parley-relay-{prefix}-{random hex}`. `None` for the in-process relay.
    pub fn client_name(&self) -> Option<&str> {
        self.0.transport.client_name()
    }

    /// Publishes several payloads in order, in one round trip (a Redis pipeline): how the
    /// projector's batches go out, so the live path keeps up with the write rate. Counted as
    /// one PUBLISH command each.
    pub async fn publish_all(&self, items: &[(Channel, Value)]) -> Result<(), RelayError> {
        let named: Vec<(String, &Value)> = items
            .iter()
            .map(|(channel, payload)| (self.channel_name(channel), payload))
            .collect();
        self.send(&named).await
    }

    /// Sends `payload` to every subscriber of `channel`, on every instance (including this
    /// one). `Ok` means Redis accepted it, not that anyone received it.
    pub async fn publish(&self, channel: &Channel, payload: &Value) -> Result<(), RelayError> {
        self.send(&[(self.channel_name(channel), payload)]).await
    }

    /// Sends through the transport, counting the payloads published or not.
    async fn send(&self, named: &[(String, &Value)]) -> Result<(), RelayError> {
        if named.is_empty() {
            return Ok(());
        }
        let counters = &self.0.hub.counters;
        let count = named.len() as u64;
        let result = self.0.transport.publish_all(named).await;
        match &result {
            Ok(()) => Counters::add(&counters.published, count),
            Err(_) => Counters::add(&counters.publish_errors, count),
        }
        result
    }

    /// Subscribes to `channel`. With Redis, returns once Redis has confirmed the subscription
    /// (at once when this instance is already subscribed), so every message published after
    /// this returns is delivered, barring a later `Resync` or `Lagged`. The Redis channel is
    /// unsubscribed when the last local [`Subscription`] to it is dropped.
    pub async fn subscribe(&self, channel: &Channel) -> Result<Subscription, RelayError> {
        let name = self.channel_name(channel);
        let joined = self.0.hub.join(&name);
        let subscription = Subscription {
            rx: joined.rx,
            name,
            shared: self.0.clone(),
        };
        if let Some(ready) = joined.ready {
            match tokio::time::timeout(self.0.timeout, ready).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(RelayError::Closed),
                Err(_) => {
                    return Err(RelayError::SubscribeTimeout {
                        timeout: self.0.timeout,
                        last_error: self.0.hub.last_error().unwrap_or_else(|| "none".to_owned()),
                    })
                }
            }
        }
        Ok(subscription)
    }

    /// Channels this instance has local subscribers to, sorted (full names).
    pub fn active_channels(&self) -> Vec<String> {
        self.0.hub.active_channels()
    }

    /// How many local subscriptions `channel` has on this instance.
    pub fn local_subscribers(&self, channel: &Channel) -> usize {
        self.0.hub.subscribers(&self.channel_name(channel))
    }

    /// Whether Redis answers (`PING`) within the timeout; always `Ok` in-process. For
    /// `/readyz`.
    pub async fn ping(&self) -> Result<(), RelayError> {
        self.0.transport.ping().await
    }

    /// The counters so far.
    pub fn stats(&self) -> RelayStats {
        let c = &self.0.hub.counters;
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        RelayStats {
            published: get(&c.published),
            publish_errors: get(&c.publish_errors),
            publish_commands: get(&c.publish_commands),
            subscribe_commands: get(&c.subscribe_commands),
            unsubscribe_commands: get(&c.unsubscribe_commands),
            received: get(&c.received),
            deliveries: get(&c.deliveries),
            disconnects: get(&c.disconnects),
            resyncs: get(&c.resyncs),
            lagged: get(&c.lagged),
            malformed: get(&c.malformed),
        }
    }
}

/// A live subscription to one channel. Dropping it releases the channel (and, for the last
/// local subscriber, the Redis subscription).
///
/// To use it as a `Stream`:
/// `futures::stream::unfold(sub, |mut s| async move { s.recv().await.map(|i| (i, s)) })`.
pub struct Subscription {
    rx: broadcast::Receiver<Item>,
    name: String,
    shared: Arc<Shared>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.name)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The channel's full name.
    pub fn channel(&self) -> &str {
        &self.name
    }

    /// The next item; waits for one. `None` only if the relay is gone.
    pub async fn recv(&mut self) -> Option<RelayItem> {
        let item = self.rx.recv().await;
        self.convert(item.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => broadcast::error::TryRecvError::Lagged(n),
            broadcast::error::RecvError::Closed => broadcast::error::TryRecvError::Closed,
        }))
    }

    /// The next item if one is buffered, without waiting.
    pub fn try_recv(&mut self) -> Option<RelayItem> {
        let item = self.rx.try_recv();
        self.convert(item)
    }

    fn convert(&self, item: Result<Item, broadcast::error::TryRecvError>) -> Option<RelayItem> {
        match item {
            Ok(Item::Message(value)) => Some(RelayItem::Message(value)),
            Ok(Item::Resync) => Some(RelayItem::Resync),
            Err(broadcast::error::TryRecvError::Lagged(skipped)) => {
                Counters::add(&self.shared.hub.counters.lagged, skipped);
                Some(RelayItem::Lagged(skipped))
            }
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => {
                None
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.hub.leave(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Event {
        n: i64,
    }

    #[test]
    fn a_relayed_payload_is_decoded_once_and_shared_by_its_clones() {
        let relayed = Relayed::new(json!({ "n": 7 }));
        let other_subscriber = relayed.clone();
        let first: *const Event = relayed.decoded::<Event>().expect("an Event");
        let second: *const Event = other_subscriber.decoded::<Event>().expect("an Event");
        assert_eq!(first, second, "both subscribers read the one decoded value");
        assert_eq!(relayed.decoded::<Event>(), Some(&Event { n: 7 }));
    }

    #[test]
    fn an_unreadable_payload_decodes_to_nothing_every_time() {
        let relayed = Relayed::new(json!({ "n": "seven" }));
        assert_eq!(relayed.decoded::<Event>(), None);
        assert_eq!(relayed.clone().decoded::<Event>(), None);
        assert_eq!(relayed.value(), &json!({ "n": "seven" }));
    }
}
