//! A private 3-master Redis Cluster for tests and benches: `redis-server --cluster-enabled yes`
//! on free loopback ports in a temporary directory, joined with `redis-cli --cluster create`.
//! Never touches the machine's shared Redis. Masters can be killed (SIGKILL) and restarted
//! with the same node id and slots (their `nodes.conf` stays in the directory).
//!
//! Needs `redis-server` and `redis-cli` 7 or newer on PATH (Debian: `apt-get install
//! redis-server`, which ships both); fails with that message when they are missing.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::Value;
use tokio::time::{sleep, Instant};

/// How long the cluster may take to form, or to heal after a restart.
const READY_WAIT: Duration = Duration::from_secs(30);

pub struct RedisCluster {
    dir: PathBuf,
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

fn need_tool(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "\n\nThis test starts its own Redis Cluster and needs `{tool}` (Redis 7 or newer) on \
         PATH. Install it (Debian/Ubuntu: `apt-get install -y redis-server`, which ships \
         redis-server and redis-cli).\n"
    );
}

/// A port whose cluster bus port (port + 10000) is free as well.
fn free_port_pair(taken: &[u16]) -> u16 {
    for _ in 0..200 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local address").port();
        drop(listener);
        if !(1_024..=55_000).contains(&port) || taken.contains(&port) {
            continue;
        }
        let both = TcpListener::bind(("127.0.0.1", port))
            .and_then(|a| TcpListener::bind(("127.0.0.1", port + 10_000)).map(|b| (a, b)));
        if both.is_ok() {
            return port;
        }
    }
    panic!("found no free port pair (port, port + 10000) for a Redis Cluster node");
}

impl RedisCluster {
    /// Starts `masters` nodes (no replicas) and forms the cluster; returns once every node
    /// reports `cluster_state:ok` and knows every slot's owner.
    pub async fn start(masters: usize) -> Self {
        need_tool("redis-server");
        need_tool("redis-cli");
        let dir = std::env::temp_dir().join(format!("parley-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let mut ports = Vec::new();
        for _ in 0..masters {
            let port = free_port_pair(&ports);
            ports.push(port);
        }
        let mut cluster = Self {
            dir,
            ports: ports.clone(),
            children: Vec::new(),
        };
        for index in 0..masters {
            let child = cluster.spawn(index);
            cluster.children.push(Some(child));
        }
        for index in 0..masters {
            cluster.wait_answers(index).await;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_healthy().await;
        cluster
    }

    fn spawn(&self, index: usize) -> Child {
        let port = self.ports[index];
        Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "1000",
                // A shard that is down only takes its own slots (rooms) down.
                "--cluster-require-full-coverage",
                "no",
                "--cluster-allow-pubsubshard-when-down",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--logfile",
                &format!("redis-{port}.log"),
            ])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server")
    }

    /// `redis://127.0.0.1:p1,redis://127.0.0.1:p2,…`: a cluster `REDIS_URL`.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node_url(&self, index: usize) -> String {
        format!("redis://127.0.0.1:{}", self.ports[index])
    }

    /// The process id of node `index` (for CPU accounting), while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.children[index].as_ref().map(Child::id)
    }

    /// A direct connection to node `index` (no cluster routing), for inspection.
    pub async fn node(&self, index: usize) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.node_url(index)).expect("node URL");
        client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|error| panic!("cluster node {index} unreachable: {error}"))
    }

    async fn try_node(&self, index: usize) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.node_url(index)).ok()?;
        tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()
    }

    async fn wait_answers(&self, index: usize) {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Some(mut conn) = self.try_node(index).await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Redis Cluster node {index} (port {}) did not start; see {}",
                self.ports[index],
                self.dir.display()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every node is up, says `cluster_state:ok`, and sees all 16384 slots assigned to
    /// masters it considers healthy.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + READY_WAIT;
        'retry: loop {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not become healthy within {READY_WAIT:?}; logs in {}",
                self.dir.display()
            );
            sleep(Duration::from_millis(50)).await;
            for index in 0..self.ports.len() {
                let Some(mut conn) = self.try_node(index).await else {
                    continue 'retry;
                };
                let info: redis::RedisResult<String> = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await;
                let Ok(info) = info else { continue 'retry };
                let ok = info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&format!("cluster_known_nodes:{}", self.ports.len()));
                if !ok {
                    continue 'retry;
                }
            }
            return;
        }
    }

    /// The index of the master owning `key`'s slot (also a sharded channel's).
    pub async fn owner_of(&self, key: &str) -> usize {
        let mut conn = self.node(0).await;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("CLUSTER KEYSLOT");
        let slots: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .expect("CLUSTER SLOTS");
        let Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS: unexpected reply {slots:?}");
        };
        for range in ranges {
            let Value::Array(fields) = range else {
                continue;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            if (*start..=*end).contains(&slot) {
                let Some(Value::Int(port)) = master.get(1) else {
                    panic!("CLUSTER SLOTS: no port in {master:?}");
                };
                return self
                    .ports
                    .iter()
                    .position(|p| i64::from(*p) == *port)
                    .expect("the owner is one of our nodes");
            }
        }
        panic!("slot {slot} of {key:?} has no owner");
    }

    /// Node `index`'s cluster node id.
    pub async fn node_id(&self, index: usize) -> String {
        let mut conn = self.node(index).await;
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut conn)
            .await
            .expect("CLUSTER MYID")
    }

    /// Moves the (key-less) slot of `key` to master `to`, as a resharding does, and waits
    /// until every node agrees on the new owner.
    pub async fn move_slot_of(&self, key: &str, to: usize) {
        let from = self.owner_of(key).await;
        assert_ne!(from, to, "{key:?} is on node {to} already");
        let mut conn = self.node(from).await;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("CLUSTER KEYSLOT");
        let (from_id, to_id) = (self.node_id(from).await, self.node_id(to).await);
        let setslot = |node: usize, args: Vec<String>| async move {
            let mut conn = self.node(node).await;
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(&args);
            let _: () = cmd
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {args:?} on {node}: {e}"));
        };
        setslot(to, vec!["IMPORTING".into(), from_id.clone()]).await;
        setslot(from, vec!["MIGRATING".into(), to_id.clone()]).await;
        for node in [to, from] {
            setslot(node, vec!["NODE".into(), to_id.clone()]).await;
        }
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let mut agreed = true;
            for node in 0..self.ports.len() {
                let mut conn = self.node(node).await;
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await
                    .expect("CLUSTER NODES");
                // The target's line lists the slot (alone or in a range).
                let owner_line = nodes
                    .lines()
                    .find(|line| line.starts_with(&to_id))
                    .unwrap_or_default();
                let owns = owner_line.split(' ').skip(8).any(|range| {
                    let mut ends = range.split('-').filter_map(|n| n.parse::<i64>().ok());
                    match (ends.next(), ends.next()) {
                        (Some(a), Some(b)) => (a..=b).contains(&slot),
                        (Some(a), None) => a == slot,
                        _ => false,
                    }
                });
                agreed &= owns;
            }
            if agreed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the nodes did not agree that slot {slot} moved to node {to}"
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sharded channels subscribed on node `index` (`PUBSUB SHARDCHANNELS pattern`).
    pub async fn shard_channels(&self, index: usize, pattern: &str) -> Vec<String> {
        let mut conn = self.node(index).await;
        let mut channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .expect("PUBSUB SHARDCHANNELS");
        channels.sort();
        channels
    }

    /// Classic (cluster-wide broadcast) channels on node `index`.
    pub async fn classic_channels(&self, index: usize, pattern: &str) -> Vec<String> {
        let mut conn = self.node(index).await;
        redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .expect("PUBSUB CHANNELS")
    }

    /// Kills node `index`'s process (SIGKILL: no goodbye to clients or peers).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `index` again (same port, same `nodes.conf`: same id and slots) and waits
    /// until the whole cluster is healthy again.
    pub async fn restart(&mut self, index: usize) {
        assert!(self.children[index].is_none(), "node {index} is running");
        let child = self.spawn(index);
        self.children[index] = Some(child);
        self.wait_answers(index).await;
        self.wait_healthy().await;
    }

    /// CPU time (user + system) node `index` has used so far, from `/proc/<pid>/stat`.
    pub fn cpu_time(&self, index: usize) -> Option<Duration> {
        cpu_time_of(self.pid(index)?)
    }
}

/// CPU time (user + system) of process `pid`, from `/proc/<pid>/stat` (Linux).
pub fn cpu_time_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for index in 0..self.children.len() {
            self.kill(index);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One private `redis-server` (no cluster) on a free port, for same-run comparisons.
pub struct RedisServer {
    dir: PathBuf,
    pub port: u16,
    child: Child,
}

impl RedisServer {
    pub async fn start() -> Self {
        need_tool("redis-server");
        let dir = std::env::temp_dir().join(format!("parley-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let port = free_port_pair(&[]);
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = Self { dir, port, child };
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let client = redis::Client::open(server.url()).expect("URL");
            if let Ok(Ok(mut conn)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.get_multiplexed_async_connection(),
            )
            .await
            {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(self.child.id())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
