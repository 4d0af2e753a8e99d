//! The load benchmark, shaped like the Socket.IO peer's `load.mjs` so the two compare side
//! by side: N senders over HTTP, each keeping K `sendMessage` in flight; M receivers on
//! `messages` subscriptions over graphql-transport-ws; R rooms (sender j sends to room
//! j % R, receiver i listens to room i % R); unique clientMsgIds.
//!
//! ```sh
//! cargo bench --bench load -- --senders=100 --receivers=100 --rooms=50 --inflight=4 --seconds=10
//! ```
//!
//! Without `--url` it starts the `parley` release binary itself on a fresh database (cloned
//! from the migrated template, dropped afterwards; `PARLEY_TEST_DATABASE_URL` as in the
//! tests) with the Redis relay (`--redis=redis://127.0.0.1:6379`, `--redis=none` for the
//! in-process one); `--binary=PATH` starts another build instead (an older commit's, for a
//! before/after ratio), on an empty database it migrates itself. `--url=http://host:port` (and `--recv-url`) drive running servers.
//!
//! Prints acked sends/s over the window, deliveries against the expected count (every
//! acked message, once per receiver of its room) and unique messages delivered, delivery
//! latency (receiver's clock minus the send time in the body) and ack latency p50/p99, and
//! the CPU split of the machine by process group from `/proc` (parley, postgres, redis,
//! this load client), then one `JSON {...}` line for scripts (`scripts/side-by-side.sh`).
//! The client runs on one thread, like the peer's Node client.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::TestDb;
use tokio::task::LocalSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as Frame;

const REGISTER: &str = "mutation($u: String!, $p: String!) { register(username: $u, password: $p) { token user { id } } }";
const CREATE_ROOM: &str = "mutation($n: String!) { createRoom(name: $n) { id } }";
const JOIN: &str = "mutation($r: ID!) { joinRoom(roomId: $r) { id } }";
const SEND: &str = "mutation($r: ID!, $b: String!, $c: String!) { sendMessage(roomId: $r, body: $b, clientMsgId: $c) { seq } }";
const MESSAGES: &str = "subscription($r: ID!) { messages(roomId: $r) { seq body } }";

#[derive(Clone, Debug)]
struct Args {
    senders: usize,
    receivers: usize,
    rooms: usize,
    inflight: usize,
    seconds: u64,
    drain: u64,
    url: Option<String>,
    recv_url: Option<String>,
    redis: Option<String>,
    prefill: u64,
    /// Another `parley` binary to start instead of this build's (a before/after comparison).
    binary: Option<String>,
}

impl Args {
    fn parse() -> Self {
        let args: Vec<String> = std::env::args().collect();
        let get = |key: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("--{key}=")).map(str::to_owned))
        };
        let num = |key: &str, default: u64| {
            get(key).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("--{key} takes a number, got {v:?}"))
            })
        };
        let redis = get("redis").unwrap_or_else(|| {
            std::env::var("PARLEY_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
        });
        Self {
            senders: num("senders", 100) as usize,
            receivers: num("receivers", 100) as usize,
            rooms: num("rooms", 50).max(1) as usize,
            inflight: num("inflight", 4).max(1) as usize,
            seconds: num("seconds", 10),
            drain: num("drain", 5),
            url: get("url"),
            recv_url: get("recv-url"),
            redis: (redis != "none").then_some(redis),
            prefill: num("prefill", 0),
            binary: get("binary"),
        }
    }
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
        * 1000.0
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable_by(f64::total_cmp);
    let index = ((p / 100.0) * samples.len() as f64) as usize;
    samples[index.min(samples.len() - 1)]
}

// ---- the server under test ---------------------------------------------------------------

/// The `parley` release binary on a fresh database, killed when dropped.
struct Server {
    child: Child,
    url: String,
    db: TestDb,
}

/// Fills the log with `count` messages in 1,000 rooms nobody reads (bulk SQL: the
/// position trigger numbers them), to run the load against a large log.
async fn prefill(db: &TestDb, count: u64) {
    eprintln!("prefilling the log with {count} events");
    let step = 100_000u64;
    let mut done = 0;
    while done < count {
        let n = step.min(count - done);
        sqlx::query(
            r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
               SELECT 'Room', 'prefill-' || (g % 1000), $1 / 1000 + g / 1000 + 1, 'MessageSent', '1.0',
                      json_build_object('MessageSent', json_build_object(
                          'message_id', gen_random_uuid(), 'seq', $1 / 1000 + g / 1000 + 1,
                          'sender', gen_random_uuid(), 'body', 'prefill ' || g,
                          'client_msg_id', 'p-' || ($1 + g), 'sent_at', '2026-11-20T00:00:00Z')),
                      '{}'::json
                 FROM generate_series(0, $2 - 1) AS g"#,
        )
        .bind(done as i64)
        .bind(n as i64)
        .execute(&db.pool)
        .await
        .expect("prefilling");
        done += n;
    }
    sqlx::query("VACUUM ANALYZE events")
        .execute(&db.pool)
        .await
        .expect("vacuum");
}

/// Sequential scans of `events` so far.
async fn events_seq_scans(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(seq_scan, 0) FROM pg_stat_user_tables WHERE relname = 'events'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap_or(-1)
}

impl Server {
    async fn start(redis: Option<&str>, prefill_events: u64, binary: Option<&str>) -> Self {
        // Another binary may know other migrations: it gets an empty database and migrates
        // it itself (`parley serve` does on start).
        let db = match binary {
            Some(_) => TestDb::empty().await,
            None => TestDb::new().await,
        };
        if prefill_events > 0 {
            assert!(
                binary.is_none(),
                "--prefill needs this build's schema: not with --binary"
            );
            prefill(&db, prefill_events).await;
        }
        let mut command = Command::new(binary.unwrap_or(env!("CARGO_BIN_EXE_parley")));
        command
            .env_remove("REDIS_URL")
            .env("DATABASE_URL", db.url())
            .env("PARLEY_JWT_SECRET", "load-bench-secret-load-bench-secret!")
            .env("PARLEY_BIND", "127.0.0.1:0")
            .env("RUST_LOG", "warn,parley::server=info")
            // One load client from one address is many users: the per-IP and per-user
            // budgets (which a real deployment keeps) would measure the limiter.
            .env("PARLEY_RATE_REQUESTS_PER_IP", "off")
            .env("PARLEY_RATE_REGISTRATIONS_PER_IP", "off")
            .env("PARLEY_RATE_SENDS_PER_USER", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(redis) = redis {
            command.env("REDIS_URL", redis);
        }
        let mut child = command.spawn().expect("starting the parley binary");
        let stderr = child.stderr.take().expect("stderr");
        let (lines, log) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            match log.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(rest) = line.split("addr=").nth(1) {
                        let addr = rest.split_whitespace().next().expect("an address");
                        // Keep draining stderr so the server never blocks on it.
                        std::thread::spawn(move || while log.recv().is_ok() {});
                        let server = Self {
                            url: format!("http://{addr}"),
                            child,
                            db,
                        };
                        server.caught_up().await;
                        return server;
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("parley did not start; stderr:\n{}", seen.join("\n"));
                }
            }
        }
    }
}

impl Server {
    /// Waits until the projector has applied the whole log.
    async fn caught_up(&self) {
        loop {
            let lag: i64 = sqlx::query_scalar(
                "SELECT (SELECT position FROM log_head)
                        - (SELECT min(position) FROM projector_checkpoints)",
            )
            .fetch_one(&self.db.pool)
            .await
            .expect("reading the lag");
            if lag <= 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- a client ------------------------------------------------------------------------------

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut request = self
            .http
            .post(format!("{}/graphql", self.url))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response: Value = request
            .send()
            .await
            .expect("the server answers")
            .json()
            .await
            .expect("a JSON answer");
        response
    }

    async fn must(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let response = self.gql(token, query, variables).await;
        assert!(
            response.get("errors").is_none(),
            "setup request failed: {response}"
        );
        response["data"].clone()
    }

    async fn register(&self, name: &str) -> String {
        let data = self
            .must(
                None,
                REGISTER,
                json!({ "u": name, "p": "load-bench-password" }),
            )
            .await;
        data["register"]["token"]
            .as_str()
            .expect("a token")
            .to_owned()
    }
}

// ---- CPU accounting ---------------------------------------------------------------------------

#[derive(Default)]
struct ProcSnapshot {
    jiffies: HashMap<u32, (String, u64, u64)>,
    total: u64,
    idle: u64,
}

fn proc_snapshot() -> ProcSnapshot {
    let mut snapshot = ProcSnapshot::default();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return snapshot;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        snapshot
            .jiffies
            .insert(pid, (comm, field(11) + field(12), field(21) * 4096));
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        snapshot.total = cpu.iter().sum();
        snapshot.idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    }
    snapshot
}

/// % of one core per group between two snapshots, and the machine's busy %.
fn cpu_split(a: &ProcSnapshot, b: &ProcSnapshot, seconds: f64) -> (Vec<(String, f64, f64)>, f64) {
    const HZ: f64 = 100.0;
    let me = std::process::id();
    let mut groups: HashMap<String, (f64, f64)> = HashMap::new();
    for (pid, (comm, jiffies, rss)) in &b.jiffies {
        let before = a.jiffies.get(pid).map_or(0, |(_, j, _)| *j);
        let group = if *pid == me {
            "load-client"
        } else {
            match comm.as_str() {
                "parley" => "parley",
                "postgres" | "postmaster" => "postgres",
                "redis-server" => "redis",
                _ => "other",
            }
        };
        let entry = groups.entry(group.to_owned()).or_default();
        entry.0 += 100.0 * jiffies.saturating_sub(before) as f64 / HZ / seconds;
        entry.1 += *rss as f64 / 1_048_576.0;
    }
    let busy = 100.0 * (1.0 - (b.idle - a.idle) as f64 / (b.total - a.total).max(1) as f64);
    let mut groups: Vec<(String, f64, f64)> =
        groups.into_iter().map(|(g, (c, r))| (g, c, r)).collect();
    groups.sort_by(|x, y| x.0.cmp(&y.0));
    (groups, busy)
}

// ---- the run ------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    acked: u64,
    acked_in_window: u64,
    errors: u64,
    expected: u64,
    deliveries: u64,
    ack_ms: Vec<f64>,
    delivery_ms: Vec<f64>,
    seen: HashSet<(usize, i64)>,
}

async fn receiver(
    url: String,
    token: String,
    room: String,
    room_index: usize,
    tally: Rc<std::cell::RefCell<Tally>>,
    subscribed: tokio::sync::mpsc::UnboundedSender<()>,
    stop: tokio_util::sync::CancellationToken,
) {
    let ws_url = format!("{}/graphql/ws", url.replacen("http", "ws", 1));
    let mut request = ws_url.into_client_request().expect("a WebSocket URL");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the WebSocket connects");
    let send = |value: Value| Frame::text(value.to_string());
    socket
        .send(send(
            json!({ "type": "connection_init", "payload": { "token": token } }),
        ))
        .await
        .expect("init sent");
    socket
        .send(send(json!({
            "id": "m", "type": "subscribe",
            "payload": { "query": MESSAGES, "variables": { "r": room } }
        })))
        .await
        .expect("subscribe sent");
    let mut announced = false;
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => break,
            frame = socket.next() => frame,
        };
        let Some(Ok(frame)) = frame else { break };
        let Frame::Text(text) = frame else { continue };
        let Ok(message) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match message["type"].as_str() {
            Some("connection_ack") if !announced => {
                announced = true;
                let _ = subscribed.send(());
            }
            Some("next") => {
                let at = now_ms();
                let data = &message["payload"]["data"]["messages"];
                let seq = data["seq"].as_i64().unwrap_or(-1);
                let sent: f64 = data["body"]
                    .as_str()
                    .and_then(|b| b.split(' ').next())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(at);
                let mut tally = tally.borrow_mut();
                tally.deliveries += 1;
                tally.seen.insert((room_index, seq));
                tally.delivery_ms.push(at - sent);
            }
            Some("ping") => {
                let _ = socket.send(send(json!({ "type": "pong" }))).await;
            }
            Some("error") | Some("complete") => {
                eprintln!("receiver of room {room_index}: {text}");
                break;
            }
            _ => {}
        }
    }
    let _ = socket.close(None).await;
}

async fn run(args: Args) {
    let server = match &args.url {
        Some(_) => None,
        None => {
            Some(Server::start(args.redis.as_deref(), args.prefill, args.binary.as_deref()).await)
        }
    };
    let send_url = args
        .url
        .clone()
        .unwrap_or_else(|| server.as_ref().expect("started").url.clone());
    let recv_url = args.recv_url.clone().unwrap_or_else(|| send_url.clone());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.senders * args.inflight + 16)
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client");
    let client = Client {
        http,
        url: send_url.clone(),
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();

    // Set-up: rooms, members (registrations are hashed on the server: a few seconds).
    eprintln!(
        "setting up {} rooms, {} senders, {} receivers",
        args.rooms, args.senders, args.receivers
    );
    let owner = client.register(&format!("owner_{run_id}")).await;
    let mut rooms = Vec::with_capacity(args.rooms);
    for r in 0..args.rooms {
        let data = client
            .must(
                Some(&owner),
                CREATE_ROOM,
                json!({ "n": format!("load {r}") }),
            )
            .await;
        rooms.push(data["createRoom"]["id"].as_str().expect("an id").to_owned());
    }
    let member = |name: String, room: String| {
        let client = client.clone();
        async move {
            let token = client.register(&name).await;
            client.must(Some(&token), JOIN, json!({ "r": room })).await;
            token
        }
    };
    // Registrations in groups of 16: password hashing is bounded to the cores, and the
    // server refuses what would queue too long.
    let mut receiver_tokens = Vec::with_capacity(args.receivers);
    for chunk in (0..args.receivers).collect::<Vec<_>>().chunks(16) {
        receiver_tokens.extend(
            futures::future::join_all(
                chunk
                    .iter()
                    .map(|&i| member(format!("recv_{run_id}_{i}"), rooms[i % args.rooms].clone())),
            )
            .await,
        );
    }
    let mut sender_tokens = Vec::with_capacity(args.senders);
    for chunk in (0..args.senders).collect::<Vec<_>>().chunks(16) {
        sender_tokens.extend(
            futures::future::join_all(
                chunk
                    .iter()
                    .map(|&j| member(format!("send_{run_id}_{j}"), rooms[j % args.rooms].clone())),
            )
            .await,
        );
    }
    let mut fanout = vec![0u64; args.rooms];
    for i in 0..args.receivers {
        fanout[i % args.rooms] += 1;
    }

    let tally = Rc::new(std::cell::RefCell::new(Tally::default()));
    let stop_receivers = tokio_util::sync::CancellationToken::new();
    let (subscribed, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let mut receivers = Vec::new();
    for (i, token) in receiver_tokens.into_iter().enumerate() {
        receivers.push(tokio::task::spawn_local(receiver(
            recv_url.clone(),
            token,
            rooms[i % args.rooms].clone(),
            i % args.rooms,
            tally.clone(),
            subscribed.clone(),
            stop_receivers.clone(),
        )));
    }
    for _ in 0..args.receivers {
        acks.recv().await.expect("every receiver connects");
    }
    // The subscriptions are set up right after the ack; give the server a moment to
    // register them all before the first send.
    tokio::time::sleep(Duration::from_millis(500)).await;

    eprintln!("sending for {} s", args.seconds);
    let window = Duration::from_secs(args.seconds);
    let scans_before = match &server {
        Some(server) => events_seq_scans(&server.db).await,
        None => -1,
    };
    let started = Instant::now();
    let cpu_before = proc_snapshot();
    let mut loops = Vec::new();
    for (j, token) in sender_tokens.iter().enumerate() {
        for k in 0..args.inflight {
            let client = client.clone();
            let token = token.clone();
            let room_index = j % args.rooms;
            let room = rooms[room_index].clone();
            let tally = tally.clone();
            let fanout = fanout[room_index];
            loops.push(tokio::task::spawn_local(async move {
                let mut n = 0u64;
                while started.elapsed() < window {
                    let sent = now_ms();
                    let body =
                        format!("{sent:.3} hello world this is a chat message of typical size");
                    n += 1;
                    let response = client
                        .gql(
                            Some(&token),
                            SEND,
                            json!({ "r": room, "b": body, "c": format!("{k}-{n}") }),
                        )
                        .await;
                    let mut tally = tally.borrow_mut();
                    if response.get("errors").is_some() {
                        tally.errors += 1;
                        if tally.errors <= 3 {
                            eprintln!("send failed: {response}");
                        }
                        continue;
                    }
                    let done = now_ms();
                    tally.acked += 1;
                    if started.elapsed() <= window {
                        tally.acked_in_window += 1;
                    }
                    tally.ack_ms.push(done - sent);
                    tally.expected += fanout;
                }
            }));
        }
    }
    tokio::time::sleep(window).await;
    let cpu_after = proc_snapshot();
    let elapsed = started.elapsed().as_secs_f64();
    let seq_scans = match &server {
        Some(server) => events_seq_scans(&server.db).await - scans_before,
        None => -1,
    };
    for task in loops {
        let _ = task.await;
    }
    let drain_until = Instant::now() + Duration::from_secs(args.drain);
    while Instant::now() < drain_until {
        {
            let tally = tally.borrow();
            if tally.deliveries >= tally.expected {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_receivers.cancel();
    for task in receivers {
        let _ = task.await;
    }

    let mut tally = tally.borrow_mut();
    let (groups, busy) = cpu_split(&cpu_before, &cpu_after, elapsed);
    let acked_per_s = tally.acked_in_window as f64 / elapsed;
    let (d50, d99) = (
        percentile(&mut tally.delivery_ms, 50.0),
        percentile(&mut tally.delivery_ms, 99.0),
    );
    let (a50, a99) = (
        percentile(&mut tally.ack_ms, 50.0),
        percentile(&mut tally.ack_ms, 99.0),
    );
    println!(
        "acked sends/s {acked_per_s:.0}  (acked {}, errors {})",
        tally.acked, tally.errors
    );
    println!(
        "deliveries {} / expected {}  unique messages delivered {}",
        tally.deliveries,
        tally.expected,
        tally.seen.len()
    );
    println!("delivery ms p50 {d50:.2} p99 {d99:.2}   ack ms p50 {a50:.2} p99 {a99:.2}");
    println!(
        "sequential scans of events during the window: {seq_scans} (log prefilled with {} events)",
        args.prefill
    );
    println!(
        "cpu (% of one core, machine busy {busy:.1}%): {}",
        groups
            .iter()
            .filter(|(g, c, _)| g != "other" || *c > 1.0)
            .map(|(g, c, r)| format!("{g} {c:.1}% {r:.0}MB"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cpu: serde_json::Map<String, Value> = groups
        .iter()
        .map(|(g, c, _)| (g.clone(), json!((c * 10.0).round() / 10.0)))
        .collect();
    println!(
        "JSON {}",
        json!({
            "senders": args.senders, "receivers": args.receivers, "rooms": args.rooms,
            "inflight": args.inflight, "seconds": args.seconds,
            "ackedPerS": acked_per_s.round(), "ackedTotal": tally.acked, "errors": tally.errors,
            "deliveries": tally.deliveries, "expectedDeliveries": tally.expected,
            "uniqueMessagesDelivered": tally.seen.len(),
            "deliveryMs": { "p50": d50, "p99": d99 }, "ackMs": { "p50": a50, "p99": a99 },
            "cpuPct": cpu, "machineBusyPct": busy, "eventsSeqScans": seq_scans,
            "prefill": args.prefill,
        })
    );
    drop(server);
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    LocalSet::new().block_on(&runtime, run(args));
}
