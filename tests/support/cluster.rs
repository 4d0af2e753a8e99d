//! A small Parley deployment of its own: a private PostgreSQL and Redis, and N real
//! `parley` processes, each reaching PostgreSQL and Redis through [`Proxy`]s of its own (so
//! one instance's database or Redis link, or one connection of it, can be slowed, cut or
//! black-holed).

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::{Connection, Row};
use tokio::time::{sleep, Instant};

use super::instance::{Instance, InstanceSpec};
use super::proxy::Proxy;
use super::services::{PrivatePostgres, PrivateRedis};

/// The projector's advisory lock key (`projections/src/postgres/projector.rs`).
use parley_projections::postgres::LOCK_KEY as PROJECTOR_LOCK;

pub struct Cluster {
    pub pg: PrivatePostgres,
    pub redis: PrivateRedis,
    /// `pg_proxies[i]` carries instance `i`'s database connections.
    pub pg_proxies: Vec<Proxy>,
    /// `redis_proxies[i]` carries instance `i`'s Redis connections.
    pub redis_proxies: Vec<Proxy>,
    pub instances: Vec<Instance>,
}

/// Who holds the projector lock: the instance, and its session as PostgreSQL sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectorHolder {
    pub instance: usize,
    pub backend_pid: i32,
    /// The session's client port: the local port of the proxy's upstream connection.
    pub client_port: u16,
}

pub fn instance_name(i: usize) -> String {
    format!("parley-{i}")
}

impl Cluster {
    /// PostgreSQL, Redis and `n` instances; instance 0 is the active projector.
    pub async fn start(n: usize) -> Self {
        let pg = PrivatePostgres::start().await;
        let redis = PrivateRedis::start().await;
        let upstream: SocketAddr = format!("127.0.0.1:{}", pg.port).parse().expect("addr");
        let redis_upstream: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().expect("addr");
        let mut pg_proxies = Vec::new();
        let mut redis_proxies = Vec::new();
        for _ in 0..n {
            pg_proxies.push(Proxy::start(upstream).await);
            redis_proxies.push(Proxy::start(redis_upstream).await);
        }
        let mut cluster = Self {
            pg,
            redis,
            pg_proxies,
            redis_proxies,
            instances: Vec::new(),
        };
        for i in 0..n {
            let spec = InstanceSpec {
                name: instance_name(i),
                database_url: cluster
                    .pg
                    .url_via(cluster.pg_proxies[i].port(), &instance_name(i)),
                redis_url: Some(format!("redis://{}", cluster.redis_proxies[i].addr)),
            };
            cluster.instances.push(Instance::start(spec).await);
            if i == 0 {
                cluster
                    .wait_for_projector(|h| h.instance == 0, Duration::from_secs(20))
                    .await;
            }
        }
        cluster
    }

    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.instances.iter().map(|i| i.addr).collect()
    }

    /// The session holding the projector lock, if any.
    pub async fn projector(&self) -> Option<ProjectorHolder> {
        let mut conn = tokio::time::timeout(Duration::from_secs(5), self.pg.admin())
            .await
            .ok()?;
        let row = sqlx::query(
            "SELECT a.application_name, a.pid, a.client_port
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted
                AND l.classid::bigint = ($1 >> 32) AND l.objid::bigint = ($1 & 4294967295)",
        )
        .bind(PROJECTOR_LOCK)
        .fetch_optional(&mut conn)
        .await
        .ok()??;
        let _ = conn.close().await;
        let name: String = row.get("application_name");
        let instance = (0..self.instances.len()).find(|&i| instance_name(i) == name)?;
        Some(ProjectorHolder {
            instance,
            backend_pid: row.get("pid"),
            client_port: u16::try_from(row.get::<i32, _>("client_port")).ok()?,
        })
    }

    /// Waits until the projector lock is held as `wanted` says; returns the holder and when.
    pub async fn wait_for_projector(
        &self,
        wanted: impl Fn(&ProjectorHolder) -> bool,
        limit: Duration,
    ) -> (ProjectorHolder, Instant) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(holder) = self.projector().await {
                if wanted(&holder) {
                    return (holder, Instant::now());
                }
            }
            assert!(
                Instant::now() < deadline,
                "the projector lock did not move as expected within {limit:?} (holder: {:?}); \
                 logs:\n{}",
                self.projector().await,
                self.log_tails(30)
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /readyz` of instance `i`: status and body (`(0, null)` if it does not answer
    /// within 5 s).
    pub async fn readiness(&self, i: usize) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .get(self.instances[i].url("/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or_default())
            }
            Err(_) => (0, serde_json::Value::Null),
        }
    }

    /// Waits until instance `i` says it is ready; returns how long that took.
    pub async fn wait_ready(&self, i: usize, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let (status, body) = self.readiness(i).await;
            if status == 200 {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "instance {i} not ready within {limit:?}: {status} {body}"
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of every instance's log, for failure messages.
    pub fn log_tails(&self, n: usize) -> String {
        self.instances
            .iter()
            .map(|i| format!("--- {}\n{}", i.spec.name, i.log_tail(n)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
