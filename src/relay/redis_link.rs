//! The Redis side of the relay: one RESP3 [`ConnectionManager`] per instance that carries
//! PUBLISH, SUBSCRIBE and UNSUBSCRIBE and receives pub/sub messages as push messages, plus a
//! link task that keeps Redis's subscriptions equal to the hub's wishes.
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

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::socket2::TcpKeepalive;
use redis::{Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::task::JoinHandle;

use super::hub::{Counters, Hub};
use super::RelayError;

/// First retry delay of the link task after a failed round.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest retry delay of the link task while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A RESP3 connection manager whose push messages feed `hub`.
pub(crate) async fn connect(
    url: &str,
    hub: Arc<Hub>,
    timeout: Duration,
) -> Result<ConnectionManager, RelayError> {
    let client = client(url, true)?;
    let config = manager_config(timeout).set_push_sender(move |push: PushInfo| {
        on_push(&hub, push);
        Ok::<(), Infallible>(())
    });
    with_timeout(timeout, client.get_connection_manager_with_config(config)).await
}

/// A plain (RESP2) connection manager for ordinary commands, e.g. presence.
pub(crate) async fn connect_plain(
    url: &str,
    timeout: Duration,
) -> Result<ConnectionManager, RelayError> {
    let client = client(url, false)?;
    with_timeout(
        timeout,
        client.get_connection_manager_with_config(manager_config(timeout)),
    )
    .await
}

fn client(url: &str, resp3: bool) -> Result<Client, RelayError> {
    let info = url.into_connection_info()?;
    let mut redis_settings = info.redis_settings().clone();
    if resp3 {
        redis_settings = redis_settings.set_protocol(ProtocolVersion::RESP3);
    }
    // Keepalive turns a silently dead peer (no FIN/RST) into an error, hence a reconnect.
    let tcp = info.tcp_settings().clone().set_keepalive(
        TcpKeepalive::new()
            .with_time(Duration::from_secs(15))
            .with_interval(Duration::from_secs(5)),
    );
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
fn on_push(hub: &Hub, push: PushInfo) {
    match push.kind {
        PushKind::Message => {
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
                Ok(value) => hub.dispatch(channel, value),
                Err(error) => {
                    Counters::add(&hub.counters.malformed, 1);
                    tracing::warn!(%channel, %error, "relay: ignoring a message that is not JSON");
                }
            }
        }
        PushKind::Disconnection => {
            tracing::warn!("relay: Redis connection lost; resubscribing when it is back");
            hub.disconnected();
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
    conn: ConnectionManager,
    client_name: String,
    timeout: Duration,
) -> LinkTask {
    LinkTask(tokio::spawn(run_link(hub, conn, client_name, timeout)))
}

async fn run_link(
    hub: Arc<Hub>,
    mut conn: ConnectionManager,
    client_name: String,
    timeout: Duration,
) {
    // The connection epoch whose connection carries our client name.
    let mut named_epoch = None;
    let mut backoff: Option<Duration> = None;
    loop {
        match backoff {
            Some(delay) => tokio::time::sleep(delay).await,
            None => hub.wake.notified().await,
        }
        loop {
            let plan = hub.plan();
            let needs_name = named_epoch != Some(plan.epoch);
            if plan.is_empty() && !needs_name {
                backoff = None;
                break;
            }
            let outcome = async {
                if needs_name {
                    set_name(&mut conn, &client_name, timeout).await?;
                    named_epoch = Some(plan.epoch);
                }
                if plan.is_empty() {
                    return Ok(());
                }
                let mut pipe = redis::pipe();
                // One channel per command: see the module docs.
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
                with_timeout(timeout, pipe.exec_async(&mut conn)).await
            }
            .await;
            match outcome {
                Ok(()) => {
                    if backoff.take().is_some() {
                        tracing::info!("relay: Redis is back; subscriptions restored");
                    }
                    hub.complete(&plan, Ok(()));
                }
                Err(error) => {
                    // Warn once per outage, not on every retry.
                    if backoff.is_none() {
                        tracing::warn!(%error, "relay: Redis subscription update failed; retrying");
                    } else {
                        tracing::debug!(%error, "relay: Redis still unavailable; retrying");
                    }
                    hub.complete(&plan, Err(error.to_string()));
                    let next = backoff.map_or(MIN_BACKOFF, |delay| (delay * 2).min(MAX_BACKOFF));
                    backoff = Some(next);
                    break;
                }
            }
        }
    }
}

/// Names the connection (`CLIENT SETNAME`) so operators and tests can find it. A server that
/// refuses the command (e.g. an ACL) does not stop the relay; an unreachable one does.
async fn set_name(
    conn: &mut ConnectionManager,
    client_name: &str,
    timeout: Duration,
) -> Result<(), RelayError> {
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("SETNAME").arg(client_name);
    match with_timeout(timeout, cmd.exec_async(conn)).await {
        Err(RelayError::Redis(error)) if !error.is_io_error() => {
            tracing::warn!(%error, "relay: Redis refused CLIENT SETNAME; continuing unnamed");
            Ok(())
        }
        other => other,
    }
}
