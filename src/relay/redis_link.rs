//! The Redis side of the relay: one RESP3 connection per instance that carries PUBLISH,
//! SUBSCRIBE and UNSUBSCRIBE and receives pub/sub messages as push messages, plus a link task
//! that keeps Redis's subscriptions equal to the hub's wishes. The connection is a
//! [`ConnectionManager`] for one server, or a cluster-async [`ClusterConnection`] when
//! `REDIS_URL` lists several nodes; then channels are sharded (`SSUBSCRIBE`/`SPUBLISH`,
//! `smessage` pushes), one per room, each living on the master that owns its slot.
//!
//! In a cluster (redis 1.8 cluster-async): the client routes each command by slot, follows
//! `MOVED`/`ASK`, keeps a tracker of sharded subscriptions and re-sends them to a node it
//! reconnects to. This module still treats a node's `Disconnection` push, or a `sunsubscribe`
//! push it did not ask for (Redis drops a shard channel's subscribers when the slot moves),
//! as "every channel lost": the link task subscribes them again (idempotent; the client
//! sends each to the slot's current owner) and subscribers get `Resync` once confirmed.
//!
//! How redis 1.x behaves, and what this file does about it (read from redis 1.2 sources):
//! - With RESP3 the `ConnectionManager` accepts a push sender; pub/sub messages arrive there,
//!   and so does a library-made `PushKind::Disconnection` when the connection dies. On that
//!   push the manager starts reconnecting at once (a bounded number of tries); later tries
//!   only happen when a command fails with an I/O error.
//! - The manager's own "automatic resubscription" replays one multi-channel `SUBSCRIBE` on the
//!   new connection and only remembers subscriptions whose command succeeded. On a
//!   multiplexed connection a multi-channel `SUBSCRIBE` answers with one push per channel, and
//!   the extra ones are taken as the replies of whatever commands are queued behind it.
//!   So this module does not use it: it sends one channel per command and resubscribes
//!   itself. After a `Disconnection` push the hub marks every channel unsubscribed; the link
//!   task then sends `CLIENT SETNAME` and one `SUBSCRIBE` per wanted channel, retrying with
//!   backoff (which also drives the manager's reconnection) until Redis confirms, and only
//!   then are subscribers told to `Resync`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::io::tcp::socket2::TcpKeepalive;
use redis::io::tcp::TcpSettings;
use redis::{
    Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, PushKind,
    RedisFuture, Value,
};
use tokio::task::JoinHandle;

use super::hub::{Counters, Hub, Plan};
use super::RelayError;

/// First retry delay of the link task after a failed round.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest retry delay of the link task while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often, in a cluster, the link task checks that the masters still hold our shard
/// subscriptions (see [`audit_shard_subscriptions`]).
const AUDIT_INTERVAL: Duration = Duration::from_secs(2);

/// The nodes named by a `REDIS_URL`: one URL is one Redis server; several, comma-separated,
/// are the seed nodes of a Redis Cluster.
pub(crate) fn node_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect()
}

/// Whether `url` names a Redis Cluster (several comma-separated node URLs).
pub(crate) fn is_cluster_url(url: &str) -> bool {
    node_urls(url).len() > 1
}

/// One connection to Redis: a single server's [`ConnectionManager`], or a Redis Cluster's
/// [`ClusterConnection`] (which routes each command to the node owning its key's slot,
/// follows `MOVED`/`ASK`, refreshes the slot map and reconnects to nodes by itself). Cheap to
/// clone; clones share the connection.
#[derive(Clone)]
pub(crate) enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Link {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// `PUBLISH`, or `SPUBLISH` in a cluster (sharded pub/sub: the message goes to the
    /// shard owning the channel's slot only, not to every node).
    pub(crate) fn publish_command(&self) -> &'static str {
        match self {
            Link::Single(_) => "PUBLISH",
            Link::Cluster(_) => "SPUBLISH",
        }
    }

    /// `PING` one node (any node, in a cluster: an instance is ready while the cluster
    /// answers at all; a shard that is down only affects its own rooms).
    pub(crate) async fn ping(&self, timeout: Duration) -> Result<(), RelayError> {
        let cmd = redis::cmd("PING");
        match self {
            Link::Single(conn) => {
                let mut conn = conn.clone();
                with_timeout(timeout, cmd.query_async::<String>(&mut conn))
                    .await
                    .map(|_pong| ())
            }
            Link::Cluster(conn) => {
                let mut conn = conn.clone();
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
                with_timeout(timeout, conn.route_command(cmd, route))
                    .await
                    .map(|_pong| ())
            }
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(conn) => conn.req_packed_command(cmd),
            Link::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(conn) => conn.get_db(),
            Link::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Sharded channels this instance asked to `SUNSUBSCRIBE` and whose confirmation has not
/// arrived yet. Any other `sunsubscribe` push is Redis dropping the subscription itself
/// (its slot moved to another shard): the hub must then subscribe again.
#[derive(Debug, Default)]
pub(crate) struct Unsubscribing(Mutex<HashMap<String, usize>>);

impl Unsubscribing {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expect(&self, name: &str) {
        *self.lock().entry(name.to_owned()).or_default() += 1;
    }

    /// Takes one expected confirmation of `name`; `false` when none was expected.
    fn confirm(&self, name: &str) -> bool {
        let mut map = self.lock();
        match map.get_mut(name) {
            Some(count) if *count > 1 => {
                *count -= 1;
                true
            }
            Some(_) => {
                map.remove(name);
                true
            }
            None => false,
        }
    }
}

/// A RESP3 connection whose push messages feed `hub`: a connection manager for one URL, a
/// cluster connection for several.
pub(crate) async fn connect(
    url: &str,
    hub: Arc<Hub>,
    unsubscribing: Arc<Unsubscribing>,
    timeout: Duration,
) -> Result<Link, RelayError> {
    let push = move |push: PushInfo| {
        on_push(&hub, &unsubscribing, push);
        Ok::<(), Infallible>(())
    };
    if is_cluster_url(url) {
        let builder = cluster_builder(url, timeout)?
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(push);
        let client = builder.build()?;
        return Ok(Link::Cluster(
            with_timeout(timeout, client.get_async_connection()).await?,
        ));
    }
    let client = client(url, true)?;
    let config = manager_config(timeout).set_push_sender(push);
    Ok(Link::Single(
        with_timeout(timeout, client.get_connection_manager_with_config(config)).await?,
    ))
}

/// A plain (RESP2) connection for ordinary commands, e.g. presence.
pub(crate) async fn connect_plain(url: &str, timeout: Duration) -> Result<Link, RelayError> {
    if is_cluster_url(url) {
        let client = cluster_builder(url, timeout)?.build()?;
        return Ok(Link::Cluster(
            with_timeout(timeout, client.get_async_connection()).await?,
        ));
    }
    let client = client(url, false)?;
    Ok(Link::Single(
        with_timeout(
            timeout,
            client.get_connection_manager_with_config(manager_config(timeout)),
        )
        .await?,
    ))
}

/// Keepalive turns a silently dead peer (no FIN/RST) into an error, hence a reconnect.
fn keepalive(tcp: TcpSettings) -> TcpSettings {
    tcp.set_keepalive(
        TcpKeepalive::new()
            .with_time(Duration::from_secs(15))
            .with_interval(Duration::from_secs(5)),
    )
}

fn cluster_builder(url: &str, timeout: Duration) -> Result<ClusterClientBuilder, RelayError> {
    let nodes = node_urls(url)
        .into_iter()
        .map(IntoConnectionInfo::into_connection_info)
        .collect::<Result<Vec<ConnectionInfo>, _>>()?;
    let tcp = keepalive(nodes[0].tcp_settings().clone());
    Ok(ClusterClientBuilder::new(nodes)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        // A few quick retries per command (MOVED, a node reconnecting); the link task retries
        // subscriptions itself, with backoff.
        // (A publish to a shard that is down fails within a few of these waits.)
        .retries(2)
        .min_retry_wait(20)
        .max_retry_wait(200)
        .tcp_settings(tcp))
}

fn client(url: &str, resp3: bool) -> Result<Client, RelayError> {
    let info = url.into_connection_info()?;
    let mut redis_settings = info.redis_settings().clone();
    if resp3 {
        redis_settings = redis_settings.set_protocol(ProtocolVersion::RESP3);
    }
    let tcp = keepalive(info.tcp_settings().clone());
    let info = info
        .set_redis_settings(redis_settings)
        .set_tcp_settings(tcp);
    Ok(Client::open(info)?)
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
        // Give up quickly; the link task (or the next command) starts another round.
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(1))
}

/// Runs `fut` under `timeout`, mapping both failure kinds to [`RelayError`].
pub(crate) async fn with_timeout<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RelayError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(RelayError::Timeout(timeout)),
    }
}

/// Called by the connection for every push message, in the order Redis sent them.
fn on_push(hub: &Hub, unsubscribing: &Unsubscribing, push: PushInfo) {
    match push.kind {
        // `smessage`: a sharded pub/sub message (cluster).
        PushKind::Message | PushKind::SMessage => {
            let (Some(channel), Some(payload)) = (push.data.first(), push.data.get(1)) else {
                return;
            };
            let (Some(channel), Some(payload)) = (bytes(channel), bytes(payload)) else {
                return;
            };
            let Ok(channel) = std::str::from_utf8(channel) else {
                return;
            };
            match serde_json::from_slice(payload) {
                Ok(value) => hub.dispatch(channel, super::Relayed::new(value)),
                Err(error) => {
                    Counters::add(&hub.counters.malformed, 1);
                    tracing::warn!(%channel, %error, "relay: ignoring a message that is not JSON");
                }
            }
        }
        PushKind::Disconnection => {
            // In a cluster: one node's connection. Every channel is treated as lost (the
            // cheap, safe side: channels on other nodes only re-read their cursor once).
            tracing::warn!("relay: Redis connection lost; resubscribing when it is back");
            hub.disconnected();
        }
        PushKind::SUnsubscribe => {
            let Some(channel) = push.data.first().and_then(bytes) else {
                return;
            };
            let channel = String::from_utf8_lossy(channel);
            if !unsubscribing.confirm(&channel) {
                // Not ours: the shard dropped the subscription because the channel's slot
                // moved (resharding, failover). Subscribe everything again, on the new owner.
                tracing::warn!(%channel, "relay: Redis dropped a sharded subscription; resubscribing");
                hub.disconnected();
            }
        }
        _ => {}
    }
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// Aborts the link task when the relay goes away.
#[derive(Debug)]
pub(crate) struct LinkTask(JoinHandle<()>);

impl Drop for LinkTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the task that keeps Redis's subscriptions in line with the hub.
pub(crate) fn spawn_link(
    hub: Arc<Hub>,
    conn: Link,
    unsubscribing: Arc<Unsubscribing>,
    client_name: String,
    timeout: Duration,
) -> LinkTask {
    LinkTask(tokio::spawn(run_link(
        hub,
        conn,
        unsubscribing,
        client_name,
        timeout,
    )))
}

async fn run_link(
    hub: Arc<Hub>,
    mut conn: Link,
    unsubscribing: Arc<Unsubscribing>,
    client_name: String,
    timeout: Duration,
) {
    // The connection epoch whose connection carries our client name.
    let mut named_epoch = None;
    let mut backoff: Option<Duration> = None;
    loop {
        match (backoff, &conn) {
            (Some(delay), _) => tokio::time::sleep(delay).await,
            (None, Link::Single(_)) => hub.wake.notified().await,
            (None, Link::Cluster(cluster)) => {
                let woken = tokio::time::timeout(AUDIT_INTERVAL, hub.wake.notified()).await;
                if woken.is_err() {
                    audit_shard_subscriptions(&hub, cluster.clone(), timeout).await;
                }
            }
        }
        loop {
            let plan = hub.plan();
            let needs_name = named_epoch != Some(plan.epoch);
            if plan.is_empty() && !needs_name {
                backoff = None;
                break;
            }
            let outcome = match &conn {
                Link::Single(_) => {
                    single_round(&hub, &mut conn, &plan, needs_name, &client_name, timeout)
                        .await
                        .map(|()| named_epoch = Some(plan.epoch))
                }
                Link::Cluster(cluster) => {
                    let cluster = cluster.clone();
                    let named =
                        !needs_name || set_name(&mut conn, &client_name, timeout).await.is_ok();
                    if named {
                        named_epoch = Some(plan.epoch);
                    }
                    let result = cluster_round(&hub, cluster, &unsubscribing, plan, timeout).await;
                    match (result, named) {
                        (Err(error), _) => Err(error),
                        (Ok(()), false) => Err(RelayError::Config(
                            "could not name every cluster connection (CLIENT SETNAME)".to_owned(),
                        )),
                        (Ok(()), true) => Ok(()),
                    }
                }
            };
            match outcome {
                Ok(()) => {
                    if backoff.take().is_some() {
                        tracing::info!("relay: Redis is back; subscriptions restored");
                    }
                }
                Err(error) => {
                    // Warn once per outage, not on every retry.
                    if backoff.is_none() {
                        tracing::warn!(%error, "relay: Redis subscription update failed; retrying");
                    } else {
                        tracing::debug!(%error, "relay: Redis still unavailable; retrying");
                    }
                    let next = backoff.map_or(MIN_BACKOFF, |delay| (delay * 2).min(MAX_BACKOFF));
                    backoff = Some(next);
                    break;
                }
            }
        }
    }
}

/// One server: the whole plan in one pipeline, one channel per command (see the module docs).
async fn single_round(
    hub: &Hub,
    conn: &mut Link,
    plan: &Plan,
    needs_name: bool,
    client_name: &str,
    timeout: Duration,
) -> Result<(), RelayError> {
    let outcome = async {
        if needs_name {
            set_name(conn, client_name, timeout).await?;
        }
        if plan.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for name in &plan.subscribe {
            pipe.cmd("SUBSCRIBE").arg(name).ignore();
        }
        for name in &plan.unsubscribe {
            pipe.cmd("UNSUBSCRIBE").arg(name).ignore();
        }
        Counters::add(
            &hub.counters.subscribe_commands,
            plan.subscribe.len() as u64,
        );
        Counters::add(
            &hub.counters.unsubscribe_commands,
            plan.unsubscribe.len() as u64,
        );
        with_timeout(timeout, pipe.exec_async(conn)).await
    }
    .await;
    hub.complete(
        plan,
        outcome.as_ref().map(|_| ()).map_err(ToString::to_string),
    );
    outcome
}

/// A cluster: one `SSUBSCRIBE`/`SUNSUBSCRIBE` per channel, all at once; the cluster client
/// sends each to the node owning the channel's slot (and remembers the subscriptions, so it
/// re-sends them to a node it reconnects to). Each channel's outcome is recorded on its own,
/// so a shard that is down does not hold back channels on the others.
async fn cluster_round(
    hub: &Hub,
    conn: ClusterConnection,
    unsubscribing: &Unsubscribing,
    plan: Plan,
    timeout: Duration,
) -> Result<(), RelayError> {
    Counters::add(
        &hub.counters.subscribe_commands,
        plan.subscribe.len() as u64,
    );
    Counters::add(
        &hub.counters.unsubscribe_commands,
        plan.unsubscribe.len() as u64,
    );
    let epoch = plan.epoch;
    let subscribes = plan.subscribe.into_iter().map(|name| {
        let mut conn = conn.clone();
        async move {
            let result = with_timeout(timeout, conn.ssubscribe(&name)).await;
            let one = Plan {
                epoch,
                subscribe: vec![name],
                unsubscribe: Vec::new(),
            };
            (one, result)
        }
    });
    let unsubscribes = plan.unsubscribe.into_iter().map(|name| {
        let mut conn = conn.clone();
        unsubscribing.expect(&name);
        async move {
            let result = with_timeout(timeout, conn.sunsubscribe(&name)).await;
            if result.is_err() {
                // No confirmation is coming for this one (or it is, and then one later
                // unexpected `sunsubscribe` costs one resubscription round).
                unsubscribing.confirm(&name);
            }
            let one = Plan {
                epoch,
                subscribe: Vec::new(),
                unsubscribe: vec![name],
            };
            (one, result)
        }
    });
    let mut first_error = None;
    let results = futures::future::join(join_all(subscribes), join_all(unsubscribes)).await;
    for (one, result) in results.0.into_iter().chain(results.1) {
        hub.complete(
            &one,
            result.as_ref().map(|_| ()).map_err(ToString::to_string),
        );
        if let Err(error) = result {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Checks that the masters still hold every shard subscription Redis once confirmed to us,
/// and starts over (subscribe everything, subscribers `Resync`) when one went missing.
///
/// The cluster client repairs a node's connection in the background and may replace a
/// connection that carried subscriptions with a new one without any `Disconnection` push
/// (seen when a master restarts while commands are failing over to it): the old socket
/// closes, Redis drops its subscriptions, and nothing would tell us. `CLIENT INFO` on each
/// master runs on the very connection the client uses for that node, and its `ssub` is the
/// number of shard channels that connection is subscribed to.
async fn audit_shard_subscriptions(hub: &Hub, mut conn: ClusterConnection, timeout: Duration) {
    let Some(before) = hub.settled_subscriptions() else {
        return;
    };
    if before.1 == 0 {
        return;
    }
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("INFO");
    let route = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let held = match with_timeout(timeout, conn.route_command(cmd, route)).await {
        Ok(value) => shard_subscription_count(&value),
        Err(error) => {
            // A master that does not answer: the next publish or subscription round sees it.
            tracing::debug!(%error, "relay: shard subscription audit skipped");
            return;
        }
    };
    let Some(held) = held else {
        tracing::debug!("relay: shard subscription audit skipped: unexpected CLIENT INFO reply");
        return;
    };
    // Only a count taken while nothing changed proves a loss.
    if held < before.1 && hub.settled_subscriptions() == Some(before) {
        tracing::warn!(
            confirmed = before.1,
            held,
            "relay: Redis lost shard subscriptions without a disconnection; resubscribing"
        );
        hub.disconnected();
    }
}

/// The sum of `ssub=` over the per-master `CLIENT INFO` replies of a fan-out.
fn shard_subscription_count(value: &Value) -> Option<usize> {
    let Value::Map(replies) = value else {
        return None;
    };
    replies.iter().try_fold(0, |total, (_node, reply)| {
        let text = match reply {
            Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?,
            Value::VerbatimString { text, .. } => text.as_str(),
            Value::SimpleString(text) => text.as_str(),
            _ => return None,
        };
        let count = text
            .split_whitespace()
            .find_map(|field| field.strip_prefix("ssub="))?
            .parse::<usize>()
            .ok()?;
        Some(total + count)
    })
}

/// Names the connection (`CLIENT SETNAME`; in a cluster, every node's) so operators and
/// tests can find it. A server that refuses the command (e.g. an ACL) does not stop the
/// relay; an unreachable one does.
async fn set_name(conn: &mut Link, client_name: &str, timeout: Duration) -> Result<(), RelayError> {
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("SETNAME").arg(client_name);
    let cluster = conn.is_cluster();
    match with_timeout(timeout, cmd.exec_async(conn)).await {
        // (In a cluster a node that is down answers with a non-I/O "connection not found":
        // retried like any other failure there.)
        Err(RelayError::Redis(error)) if !error.is_io_error() && !cluster => {
            tracing::warn!(%error, "relay: Redis refused CLIENT SETNAME; continuing unnamed");
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addr: &str, info: &str) -> (Value, Value) {
        (
            Value::BulkString(addr.as_bytes().to_vec()),
            Value::VerbatimString {
                format: redis::VerbatimFormat::Text,
                text: info.to_owned(),
            },
        )
    }

    #[test]
    fn the_audit_adds_up_every_masters_shard_subscriptions() {
        let reply = Value::Map(vec![
            node(
                "127.0.0.1:7000",
                "id=3 addr=x name=parley sub=0 psub=0 ssub=2 multi=-1\n",
            ),
            node(
                "127.0.0.1:7001",
                "id=9 addr=y name=parley sub=0 psub=0 ssub=0 multi=-1\n",
            ),
            node(
                "127.0.0.1:7002",
                "id=4 addr=z name=parley sub=0 psub=0 ssub=5 multi=-1\n",
            ),
        ]);
        assert_eq!(shard_subscription_count(&reply), Some(7));
    }

    #[test]
    fn the_audit_proves_nothing_from_a_reply_it_cannot_read() {
        let no_field = Value::Map(vec![node("127.0.0.1:7000", "id=3 sub=0 psub=0")]);
        assert_eq!(shard_subscription_count(&no_field), None);
        let failed = Value::Map(vec![(
            Value::BulkString(b"127.0.0.1:7000".to_vec()),
            Value::Nil,
        )]);
        assert_eq!(shard_subscription_count(&failed), None);
        assert_eq!(shard_subscription_count(&Value::Okay), None);
    }
}
