//! API benchmarks over real sockets.
//!
//! `cargo bench --bench api` prints:
//! 1. sequential request latency over HTTP/1.1 keep-alive (one request at a time) against
//!    an in-process server on PostgreSQL (its own database, dropped afterwards) and on the
//!    embedded store: `sendMessage`, `{ me { id } }` and the floor `{ __typename }` (HTTP,
//!    bearer token, GraphQL, no resolver I/O), each as p50/p99/max and throughput, with
//!    ratios against the floor and against `me`;
//! 2. the memory an idle, subscribed WebSocket connection costs the real release binary
//!    (`parley`, embedded store, a child process): its RSS (`/proc/<pid>/status`) before,
//!    with N graphql-transport-ws connections subscribed to `messages` (all of them shown
//!    live by one broadcast message), and after they close, over several rounds (a leak
//!    shows as idle RSS climbing round after round). Run twice: with glibc's defaults, and
//!    with `MALLOC_MMAP_THRESHOLD_=65536`, under which large freed blocks go back to the
//!    system so the after-close RSS shows what is really still held.
//!
//! `cargo bench --bench api -- latency` or `-- memory` runs one part. Sizes:
//! `PARLEY_BENCH_SENDS` (default 2,000), `PARLEY_BENCH_WARMUP` (200),
//! `PARLEY_BENCH_CONNECTIONS` (5,000), `PARLEY_BENCH_ROUNDS` (3). The soft limit on open
//! files is raised to the hard limit (the server child inherits it); if the hard limit is
//! too low for the connections asked for, the bench says so and stops.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::api::{Store, TestServer};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

const SEND: &str = "mutation($r: ID!, $b: String!, $c: String!) { sendMessage(roomId: $r, body: $b, clientMsgId: $c) { seq } }";
const ME: &str = "{ me { id } }";
const TYPENAME: &str = "{ __typename }";
const MESSAGES: &str = "subscription($r: ID!) { messages(roomId: $r) { seq } }";
const REGISTER: &str = "mutation($u: String!, $p: String!) { register(username: $u, password: $p) { token user { id } } }";
const CREATE_ROOM: &str = "mutation($n: String!) { createRoom(name: $n) { id } }";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Latency
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
    per_second: f64,
}

impl Stats {
    fn new(mut samples: Vec<Duration>, elapsed: Duration) -> Self {
        samples.sort_unstable();
        let n = samples.len();
        let at = |q: f64| samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
        Self {
            p50: at(0.50),
            p99: at(0.99),
            max: samples[n - 1],
            per_second: n as f64 / elapsed.as_secs_f64(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// POSTs one GraphQL request and returns its `data`; any error stops the bench.
async fn graphql(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let mut request = client
        .post(url)
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST /graphql");
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON body");
    assert!(
        status.is_success() && body.get("errors").is_none(),
        "{query} failed with {status}: {body}"
    );
    body["data"].clone()
}

/// Runs `op(i)` for `warmup` unmeasured and then `n` measured sequential iterations.
async fn timed<F, Fut>(warmup: usize, n: usize, mut op: F) -> Stats
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..warmup {
        op(i).await;
    }
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for i in warmup..warmup + n {
        let t = Instant::now();
        op(i).await;
        samples.push(t.elapsed());
    }
    Stats::new(samples, started.elapsed())
}

struct StoreRun {
    typename: Stats,
    me: Stats,
    send: Stats,
}

async fn latency_on(store: Store, warmup: usize, n: usize) -> StoreRun {
    let server = TestServer::start(store).await;
    let alice = server.register("bench_alice").await;
    let room = server.create_room(&alice, "bench", &[]).await;
    // One keep-alive connection, requests one at a time.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("an HTTP client");
    let url = server.url("/graphql");
    let (client, url, token, room) = (&client, url.as_str(), alice.token.as_str(), &room);

    let typename = timed(warmup, n, |_| async move {
        let data = graphql(client, url, Some(token), TYPENAME, json!({})).await;
        assert_eq!(data["__typename"], "Query", "{data}");
    })
    .await;
    let me = timed(warmup, n, |_| async move {
        let data = graphql(client, url, Some(token), ME, json!({})).await;
        assert!(data["me"]["id"].is_string(), "{data}");
    })
    .await;
    let send = timed(warmup, n, |i| async move {
        let data = graphql(
            client,
            url,
            Some(token),
            SEND,
            json!({ "r": room, "b": format!("benchmark message {i}"), "c": format!("b-{i}") }),
        )
        .await;
        assert_eq!(data["sendMessage"]["seq"], i + 1, "{data}");
    })
    .await;
    server.stop().await;
    StoreRun { typename, me, send }
}

async fn latency(warmup: usize, n: usize) {
    println!(
        "== 1. sequential requests over HTTP/1.1 keep-alive, in-process server \
         ({n} measured after {warmup} warm-up) =="
    );
    let postgres = latency_on(Store::Postgres, warmup, n).await;
    let embedded = latency_on(Store::Memory, warmup, n).await;
    let floor = embedded.typename;
    let me = embedded.me;
    println!(
        "{:<36} {:>8} {:>8} {:>8} {:>9} {:>10} {:>10} {:>8}",
        "operation (with a bearer token)",
        "p50 ms",
        "p99 ms",
        "max ms",
        "req/s",
        "p50/floor",
        "p99/floor",
        "p50/me"
    );
    let rows = [
        ("{ __typename }, embedded (floor)", embedded.typename),
        ("{ __typename }, postgres", postgres.typename),
        ("{ me { id } }, embedded", embedded.me),
        ("{ me { id } }, postgres", postgres.me),
        ("sendMessage { seq }, embedded", embedded.send),
        ("sendMessage { seq }, postgres", postgres.send),
    ];
    for (name, s) in rows {
        println!(
            "{name:<36} {:>8.3} {:>8.3} {:>8.3} {:>9.0} {:>10.2} {:>10.2} {:>8.2}",
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            s.per_second,
            ms(s.p50) / ms(floor.p50),
            ms(s.p99) / ms(floor.p99),
            ms(s.p50) / ms(me.p50),
        );
    }
    println!(
        "sendMessage postgres/embedded: p50 {:.2}x, p99 {:.2}x, throughput {:.2}x",
        ms(postgres.send.p50) / ms(embedded.send.p50),
        ms(postgres.send.p99) / ms(embedded.send.p99),
        postgres.send.per_second / embedded.send.per_second,
    );
    println!(
        "floor = `{{ __typename }}` on the embedded store (HTTP + auth + GraphQL, no resolver \
         I/O); `me` = `{{ me {{ id }} }}` on the embedded store"
    );
    println!();
}

// ---------------------------------------------------------------------------------------
// WebSocket memory
// ---------------------------------------------------------------------------------------

/// The `parley` release binary, serving the embedded store on a random port.
struct ServerProcess {
    child: Child,
    addr: String,
    log: std_mpsc::Receiver<String>,
}

impl ServerProcess {
    fn start(env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
        for var in [
            "DATABASE_URL",
            "REDIS_URL",
            "PARLEY_JWT_SECRET",
            "PARLEY_DB_POOL_SIZE",
            MMAP_THRESHOLD,
        ] {
            command.env_remove(var);
        }
        command.envs(env.iter().copied());
        let mut child = command
            .env("PARLEY_BIND", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            // Thousands of connections from one address: the per-IP budgets (which a real
            // deployment keeps) would refuse them.
            .env("PARLEY_RATE_REQUESTS_PER_IP", "off")
            .env("PARLEY_RATE_REGISTRATIONS_PER_IP", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the parley binary");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, log) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
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
                        return Self {
                            addr: addr.to_owned(),
                            child,
                            log,
                        };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "parley did not report its address; stderr:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    }

    /// `VmRSS` and `RssAnon` of the process, in KiB.
    fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading /proc/<pid>/status (Linux only)");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status"))
        };
        (field("VmRSS:"), field("RssAnon:"))
    }

    /// The warnings and errors the server logged so far.
    fn problems(&self) -> Vec<String> {
        self.log
            .try_iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a graphql-transport-ws connection, signs in and subscribes to the room's messages.
async fn open_subscribed(addr: &str, token: &str, room: &str) -> Result<Socket, String> {
    let mut request = format!("ws://{addr}/graphql/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let init = json!({ "type": "connection_init", "payload": { "token": token } });
    socket
        .send(Frame::Text(init.to_string().into()))
        .await
        .map_err(|e| format!("connection_init: {e}"))?;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .map_err(|_| "no connection_ack within 30 s".to_owned())?;
        match frame {
            Some(Ok(Frame::Text(text))) => {
                let message: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                match message["type"].as_str() {
                    Some("connection_ack") => break,
                    Some("ping") => {
                        let pong = json!({ "type": "pong" }).to_string();
                        socket
                            .send(Frame::Text(pong.into()))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    _ => return Err(format!("expected connection_ack, got {message}")),
                }
            }
            Some(Ok(Frame::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed before connection_ack".to_owned()),
        }
    }
    let subscribe = json!({
        "id": "m", "type": "subscribe",
        "payload": { "query": MESSAGES, "variables": { "r": room } }
    });
    socket
        .send(Frame::Text(subscribe.to_string().into()))
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    Ok(socket)
}

#[derive(Default, Debug)]
struct Counters {
    /// `next` messages received, all connections together.
    received: AtomicUsize,
    /// `error`/`complete` messages, or `next` carrying errors.
    refused: AtomicUsize,
    /// Connections the server closed (or that broke) before the bench closed them.
    lost: AtomicUsize,
}

/// Holds one connection open (answering pings, counting messages) until `stop`, then closes
/// it cleanly.
async fn hold(mut socket: Socket, counters: Arc<Counters>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            frame = socket.next() => match frame {
                Some(Ok(Frame::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap_or_default();
                    match message["type"].as_str() {
                        Some("next") if message["payload"].get("errors").is_none() => {
                            counters.received.fetch_add(1, Ordering::Relaxed);
                        }
                        Some("ping") => {
                            let pong = json!({ "type": "pong" }).to_string();
                            let _ = socket.send(Frame::Text(pong.into())).await;
                        }
                        Some("pong") => {}
                        _ => {
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Some(Ok(Frame::Close(_)) | Err(_)) | None => {
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    // Close handshake: our Close, then read until the server's Close ends the stream.
    let _ = socket.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            println!("  (gave up waiting for {what} after {timeout:?})");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// `parley_active_subscriptions` from the server's `/metrics`.
async fn active_subscriptions(client: &reqwest::Client, base: &str) -> Option<i64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("parley_active_subscriptions "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
}

async fn wait_for_subscriptions(client: &reqwest::Client, base: &str, want: i64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = active_subscriptions(client, base).await;
        if now == Some(want) || (want == 0 && now.is_none()) {
            return true;
        }
        if Instant::now() > deadline {
            println!("  (server reports {now:?} active subscriptions, expected {want})");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kib(v: u64) -> String {
    format!("{:.1} MiB", v as f64 / 1024.0)
}

/// glibc's tunable: blocks at least this large are mmapped and so go back to the system
/// when freed (by default the threshold adapts upwards and freed blocks stay in the heap).
const MMAP_THRESHOLD: &str = "MALLOC_MMAP_THRESHOLD_";

async fn websocket_memory(connections: usize, rounds: usize) {
    println!(
        "== 2. memory of idle subscribed WebSocket connections: release `parley` binary, \
         embedded store, {connections} connections x {rounds} rounds =="
    );
    raise_open_files(connections);
    let variants: [(&str, &[(&str, &str)]); 2] = [
        ("glibc malloc, default settings", &[]),
        (
            "glibc malloc, MALLOC_MMAP_THRESHOLD_=65536 (large blocks returned on free)",
            &[(MMAP_THRESHOLD, "65536")],
        ),
    ];
    for (name, env) in variants {
        println!("-- server with {name}");
        memory_rounds(env, connections, rounds).await;
    }
}

fn raise_open_files(connections: usize) {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    let wanted = connections as u64 + 1024;
    let raised = rlimit::increase_nofile_limit(wanted.max(soft)).expect("raising RLIMIT_NOFILE");
    println!("open files limit: soft {soft} -> {raised} (hard {hard}); the server inherits it");
    assert!(
        raised >= wanted,
        "{connections} connections need about {wanted} open files per process but the hard \
         limit is {hard}: raise it (e.g. `ulimit -Hn 20000` as root, or in limits.conf) or set \
         PARLEY_BENCH_CONNECTIONS lower"
    );
}

async fn memory_rounds(env: &[(&str, &str)], connections: usize, rounds: usize) {
    let server = ServerProcess::start(env);
    let base = format!("http://{}", server.addr);
    let url = format!("{base}/graphql");
    let client = reqwest::Client::new();
    let data = graphql(
        &client,
        &url,
        None,
        REGISTER,
        json!({ "u": "ws_bench", "p": "password-123" }),
    )
    .await;
    let token = data["register"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let data = graphql(
        &client,
        &url,
        Some(&token),
        CREATE_ROOM,
        json!({ "n": "ws bench" }),
    )
    .await;
    let room = data["createRoom"]["id"].as_str().expect("room").to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (baseline, baseline_anon) = server.rss();
    println!(
        "server pid {}, RSS after start + 1 user + 1 room: {} (anon {})",
        server.child.id(),
        kib(baseline),
        kib(baseline_anon)
    );
    println!(
        "{:<6} {:>12} {:>12} {:>14} {:>14} {:>12} {:>14}",
        "round", "open s", "RSS idle", "delta", "per conn", "delivered", "RSS closed"
    );

    let mut seq = 0;
    let mut after_close = Vec::new();
    for round in 1..=rounds {
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        // Connections are opened 64 at a time (the handshake) and then held by their own tasks.
        let gate = Arc::new(Semaphore::new(64));
        let (ready_tx, mut ready) = mpsc::unbounded_channel::<Result<(), String>>();
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(connections);
        for _ in 0..connections {
            let (addr, token, room) = (server.addr.clone(), token.clone(), room.clone());
            let (gate, ready_tx) = (gate.clone(), ready_tx.clone());
            let (counters, stop) = (counters.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.expect("gate");
                let opened = open_subscribed(&addr, &token, &room).await;
                drop(permit);
                match opened {
                    Ok(socket) => {
                        let _ = ready_tx.send(Ok(()));
                        hold(socket, counters, stop).await;
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            }));
        }
        drop(ready_tx);
        let mut failures = Vec::new();
        for _ in 0..connections {
            match ready.recv().await {
                Some(Ok(())) => {}
                Some(Err(error)) => failures.push(error),
                None => break,
            }
        }
        let open_time = started.elapsed();
        assert!(
            failures.is_empty(),
            "{} of {connections} connections failed, first: {}",
            failures.len(),
            failures[0]
        );
        // All subscribed, as the server counts them.
        let all_subscribed = wait_for_subscriptions(&client, &base, connections as i64).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (idle, _) = server.rss();

        // One message: every connection must get it (proves each subscription is live).
        seq += 1;
        let data = graphql(
            &client,
            &url,
            Some(&token),
            SEND,
            json!({ "r": room, "b": "hello, everyone", "c": format!("ws-{seq}") }),
        )
        .await;
        assert_eq!(data["sendMessage"]["seq"], seq);
        wait_until(
            "every connection to receive the message",
            Duration::from_secs(60),
            || counters.received.load(Ordering::Relaxed) >= connections,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (after_message, _) = server.rss();
        let delivered = counters.received.load(Ordering::Relaxed);

        stop.cancel();
        for task in tasks {
            let _ = task.await;
        }
        wait_for_subscriptions(&client, &base, 0).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (closed, _) = server.rss();
        after_close.push(closed);

        let delta = idle.saturating_sub(baseline);
        println!(
            "{round:<6} {:>12.2} {:>12} {:>14} {:>10.1} KiB {:>12} {:>14}",
            open_time.as_secs_f64(),
            kib(idle),
            kib(delta),
            delta as f64 / connections as f64,
            format!("{delivered}/{connections}"),
            kib(closed),
        );
        println!(
            "       after one broadcast message: RSS {} ({:.1} KiB per connection over the \
             baseline); subscriptions all seen by /metrics: {all_subscribed}; refused {}, \
             lost {}",
            kib(after_message),
            after_message.saturating_sub(baseline) as f64 / connections as f64,
            counters.refused.load(Ordering::Relaxed),
            counters.lost.load(Ordering::Relaxed),
        );
    }
    if let (Some(first), Some(last)) = (after_close.first(), after_close.last()) {
        println!(
            "RSS after close: round 1 {} -> round {rounds} {} (baseline {}); \
             a steady after-close RSS across rounds means no per-connection leak",
            kib(*first),
            kib(*last),
            kib(baseline)
        );
    }
    let problems = server.problems();
    if !problems.is_empty() {
        println!("server warnings/errors ({}):", problems.len());
        for line in problems.iter().take(10) {
            println!("  {line}");
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter: `latency` or `memory`.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wants("latency") {
        latency(
            env_usize("PARLEY_BENCH_WARMUP", 200),
            env_usize("PARLEY_BENCH_SENDS", 2_000),
        )
        .await;
    }
    if wants("memory") {
        websocket_memory(
            env_usize("PARLEY_BENCH_CONNECTIONS", 5_000),
            env_usize("PARLEY_BENCH_ROUNDS", 3),
        )
        .await;
    }
}
