//! Redis for tests: the URL to use, an inspection connection that fails with a clear message
//! when Redis is unreachable, per-test prefixes, connection kills by client name, and a TCP
//! proxy that plays a Redis outage.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, IntoConnectionInfo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::timeout;

pub fn redis_url() -> String {
    std::env::var("PARLEY_TEST_REDIS_URL")
        .or_else(|_| std::env::var("REDIS_URL"))
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())
}

/// A direct connection for inspecting Redis; fails the test if Redis is unreachable.
pub async fn admin() -> MultiplexedConnection {
    let url = redis_url();
    let attempt = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    };
    match timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => panic!("{}", unreachable_message(&url, &error.to_string())),
        Err(_) => panic!("{}", unreachable_message(&url, "no answer within 5 s")),
    }
}

pub fn unreachable_message(url: &str, error: &str) -> String {
    format!(
        "Redis is not reachable at {url} ({error}). These tests need a real Redis: start one \
         with `docker compose up -d redis` or `redis-server --daemonize yes --port 6379`, or \
         set PARLEY_TEST_REDIS_URL (or REDIS_URL) to a Redis you may use."
    )
}

/// A fresh prefix: alphanumeric, so it is also a literal `PUBSUB CHANNELS` / `KEYS` pattern.
pub fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// How many Redis connections are subscribed to `channel` (`PUBSUB NUMSUB`; one per instance
/// listening there).
pub async fn redis_subscribers(channel: &str) -> i64 {
    let mut conn = admin().await;
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut conn)
        .await
        .expect("PUBSUB NUMSUB");
    count
}

/// `CLIENT LIST` ids of connections named `name`.
pub async fn client_ids_named(name: &str) -> Vec<String> {
    let mut conn = admin().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter(|line| line.split(' ').any(|field| field == format!("name={name}")))
        .filter_map(|line| {
            line.split(' ')
                .find_map(|field| field.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

/// A TCP proxy in front of the real Redis that the test can cut and restore, to play a
/// Redis outage without touching the shared server.
pub struct FaultyProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl FaultyProxy {
    pub async fn start(upstream: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let up = up.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(client); // "down": the connection closes at once
                        continue;
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().expect("lock").push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        Self {
            addr,
            up,
            connections,
            accept,
        }
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The host and port of a `redis://` URL.
pub fn upstream_of(url: &str) -> (String, u16) {
    let info = url.into_connection_info().expect("valid Redis URL");
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        other => panic!("the outage test needs a plain TCP Redis URL, not {other:?}"),
    }
}

/// `url` with its host and port replaced by `addr` (credentials and database kept).
pub fn url_via(url: &str, addr: SocketAddr) -> String {
    let info = url.into_connection_info().expect("valid Redis URL");
    let redis = info.redis_settings();
    let auth = match (redis.username(), redis.password()) {
        (None, None) => String::new(),
        (user, password) => format!("{}:{}@", user.unwrap_or(""), password.unwrap_or("")),
    };
    format!("redis://{auth}{addr}/{}", redis.db())
}

/// Kills every Redis connection named `name` (a relay's), as a network failure would.
pub async fn kill_clients_named(name: &str) {
    let mut conn = admin().await;
    for id in client_ids_named(name).await {
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(&id)
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL");
        assert_eq!(killed, 1, "CLIENT KILL ID {id} killed nothing");
    }
}
