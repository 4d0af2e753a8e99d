//! Live delivery benchmark: from `sendMessage` on one instance to subscribers' WebSockets.
//!
//! `cargo bench --bench live` runs, in one process and one run:
//! 1. **single instance** (the baseline): one in-process server on PostgreSQL (its own
//!    database) with the in-process relay; the sender and the subscribers are on it;
//! 2. **cross instance**: instances A and B over one PostgreSQL database and one Redis under
//!    one random prefix (as `tests/multi_instance.rs`), A's projector the active one; the
//!    sender is on A, the subscribers on B, so every message crosses Redis.
//!
//! Each scenario: `PARLEY_BENCH_SUBSCRIBERS` (10) users, each on its own real
//! graphql-transport-ws connection subscribed to `messages(roomId) { seq }` in every one of
//! `PARLEY_BENCH_ROOMS` (16) rooms (so every message reaches every subscriber);
//! `PARLEY_BENCH_SENDERS` (32) sender tasks, each on its own HTTP/1.1 keep-alive connection,
//! sender `k` writing to room `k % rooms`, paced together at 100 msg/s for
//! `PARLEY_BENCH_PHASE_SECS` (10) s, then at 1,000 and at 2,000 msg/s for as long each
//! (`PARLEY_BENCH_RATES`, comma-separated, sets other phases: e.g. one past the maximum,
//! which the achieved rate then shows) (a
//! `tokio::time::interval` per task, staggered; a task that falls behind catches up in a
//! burst, and whatever was not started before the phase ends is not sent, so the achieved
//! rate is reported). Several rooms because one room's writes are serialized: on 2 cores one
//! room took about 300 msg/s. A warm-up of `PARLEY_BENCH_WARMUP` (20) messages per sender
//! precedes the measured phases and proves every subscription live.
//!
//! Latency of one delivery = when the subscriber's task read the `next` frame minus when the
//! sender started the `sendMessage` HTTP call (one monotonic clock: all in one process). The
//! bench prints p50/p99/max per rate and scenario, and the cross/single ratios; and, for the
//! cross-instance run, Redis commands (`RelayStats::redis_commands()` of A and B summed) per
//! WebSocket message delivered to the subscribers, with the PUBLISH count and relay deliveries.
//!
//! To say where the time goes, the bench also stamps each message when the projecting
//! instance hands it to its live feed (`App::live`, right after the projector's commit) and
//! splits the latency there; with `PARLEY_BENCH_REDIS_TAP=1` a plain Redis subscriber also
//! stamps it when Redis hands it out (diagnostics: one more Redis copy per message).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parley::graphql::WsConfig;
use parley::relay::{Channel, PresenceConfig, RelayStats};
use parley::store::{EventLog, PostgresLog};
use parley_domain::{RoomEvent, RoomId};
use parley_projections::DecodedEvent;
use serde_json::{json, Value};
use support::api::{open_socket, redis_options, Session, Store, TestServer};
use support::redis::{admin, redis_url, unique_prefix};
use support::TestDb;
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

const SEND: &str = "mutation($r: ID!, $b: String!, $c: String!) { sendMessage(roomId: $r, body: $b, clientMsgId: $c) { seq } }";
const MESSAGES: &str = "subscription($r: ID!) { messages(roomId: $r) { seq } }";
/// The paced phases, msg/s: `PARLEY_BENCH_RATES` (comma-separated), default 100,1000,2000.
fn rates() -> &'static [u32] {
    static RATES: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    RATES.get_or_init(|| {
        let wanted = std::env::var("PARLEY_BENCH_RATES").unwrap_or_default();
        let parsed: Vec<u32> = wanted
            .split(',')
            .filter_map(|r| r.trim().replace('_', "").parse().ok())
            .filter(|&r| r > 0)
            .collect();
        if parsed.is_empty() {
            vec![100, 1_000, 2_000]
        } else {
            parsed
        }
    })
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug)]
struct Config {
    subscribers: usize,
    rooms: usize,
    senders: usize,
    warmup: usize,
    phase: Duration,
}

// ---------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Stats {
    fn new(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let at = |q: f64| samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
        Self {
            n,
            p50: at(0.50),
            p99: at(0.99),
            max: samples[n - 1],
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------------------

/// One `next` frame: which room (subscription id), which seq, when it was read.
#[derive(Clone, Copy, Debug)]
struct Receipt {
    room: usize,
    seq: i64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Received {
    /// `next` frames with a seq, all subscribers together.
    next: AtomicUsize,
    /// `error`/`complete` frames, `next` with errors, unreadable frames.
    refused: AtomicUsize,
    /// Connections that ended before the bench closed them.
    lost: AtomicUsize,
}

/// Opens a graphql-transport-ws connection as `token` and subscribes to every room
/// (subscription id = the room's index).
async fn subscribe_all(addr: std::net::SocketAddr, token: &str, rooms: &[String]) -> Socket {
    let mut socket = open_socket(addr, "graphql-transport-ws", None).await;
    let init = json!({ "type": "connection_init", "payload": { "token": token } });
    socket
        .send(Frame::Text(init.to_string().into()))
        .await
        .expect("sending connection_init");
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("connection_ack within 30 s")
            .expect("the socket stays open")
            .expect("a frame");
        if let Frame::Text(text) = frame {
            let message: Value = serde_json::from_str(&text).expect("JSON");
            match message["type"].as_str() {
                Some("connection_ack") => break,
                Some("ping") => {
                    let pong = json!({ "type": "pong" }).to_string();
                    socket.send(Frame::Text(pong.into())).await.expect("pong");
                }
                _ => panic!("expected connection_ack, got {message}"),
            }
        }
    }
    for (i, room) in rooms.iter().enumerate() {
        let subscribe = json!({
            "id": i.to_string(), "type": "subscribe",
            "payload": { "query": MESSAGES, "variables": { "r": room } }
        });
        socket
            .send(Frame::Text(subscribe.to_string().into()))
            .await
            .expect("sending subscribe");
    }
    socket
}

/// Reads `socket` until `stop`, stamping every `next` frame as soon as it is read.
async fn read(
    mut socket: Socket,
    counters: Arc<Received>,
    stop: CancellationToken,
) -> Vec<Receipt> {
    let mut receipts = Vec::with_capacity(64 * 1024);
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => break,
            frame = socket.next() => frame,
        };
        let at = Instant::now();
        match frame {
            Some(Ok(Frame::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap_or_default();
                match message["type"].as_str() {
                    Some("next") => {
                        let room = message["id"].as_str().and_then(|id| id.parse().ok());
                        let seq = message["payload"]["data"]["messages"]["seq"].as_i64();
                        match (room, seq) {
                            (Some(room), Some(seq)) => {
                                receipts.push(Receipt { room, seq, at });
                                counters.next.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                eprintln!("unexpected frame: {message}");
                                counters.refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Some("ping") => {
                        let pong = json!({ "type": "pong" }).to_string();
                        let _ = socket.send(Frame::Text(pong.into())).await;
                    }
                    Some("pong") => {}
                    _ => {
                        eprintln!("unexpected frame: {message}");
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(Ok(Frame::Close(_)) | Err(_)) | None => {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                return receipts;
            }
            Some(Ok(_)) => {}
        }
    }
    let _ = socket.close(None).await;
    receipts
}

/// Stamps every message the projecting instance hands to its live feed (committed to the
/// read models, about to be published on the relay), until `stop`.
async fn tap(
    server_app: parley::app::App,
    rooms: HashMap<String, usize>,
    stop: CancellationToken,
) -> (Vec<Receipt>, u64) {
    let mut feed = server_app.live.subscribe();
    let mut projected = Vec::with_capacity(64 * 1024);
    let mut lagged = 0;
    loop {
        let batch = tokio::select! {
            () = stop.cancelled() => break,
            batch = feed.recv() => batch,
        };
        let at = Instant::now();
        let batch = match batch {
            Ok(batch) => batch,
            Err(RecvError::Lagged(n)) => {
                lagged += n;
                continue;
            }
            Err(RecvError::Closed) => break,
        };
        for (log, decoded) in batch.iter() {
            if let DecodedEvent::Room(_, RoomEvent::MessageSent { seq, .. }) = decoded {
                if let Some(room) = rooms.get(&log.aggregate_id) {
                    projected.push(Receipt {
                        room: *room,
                        seq: seq.0 as i64,
                        at,
                    });
                }
            }
        }
    }
    (projected, lagged)
}

/// Diagnostics (`PARLEY_BENCH_REDIS_TAP=1`, cross-instance only): a plain Redis subscriber
/// to the rooms' channels that stamps each message when Redis hands it out. Costs Redis one
/// more copy per message; not in `RelayStats`.
async fn redis_tap(
    url: String,
    channels: HashMap<String, usize>,
    ready: tokio::sync::oneshot::Sender<()>,
    stop: CancellationToken,
) -> Vec<Receipt> {
    let client = redis::Client::open(url.as_str()).expect("Redis URL");
    let mut pubsub = client.get_async_pubsub().await.expect("Redis tap");
    for name in channels.keys() {
        pubsub.subscribe(name).await.expect("SUBSCRIBE");
    }
    let _ = ready.send(());
    let mut messages = pubsub.on_message();
    let mut seen = Vec::with_capacity(64 * 1024);
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = messages.next() => message,
        };
        let at = Instant::now();
        let Some(message) = message else { break };
        let Some(room) = channels.get(message.get_channel_name()) else {
            continue;
        };
        let Ok(payload) = message.get_payload::<String>() else {
            continue;
        };
        let value: Value = serde_json::from_str(&payload).unwrap_or_default();
        if value["type"] == "message" {
            if let Some(seq) = value["message"]["seq"].as_i64() {
                seen.push(Receipt {
                    room: *room,
                    seq,
                    at,
                });
            }
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------
// Senders
// ---------------------------------------------------------------------------------------

/// One `sendMessage` call. `phase` is `None` for the warm-up.
#[derive(Clone, Copy, Debug)]
struct Sent {
    phase: Option<usize>,
    room: usize,
    seq: i64,
    /// When the pacer meant it to start.
    scheduled: Instant,
    /// When the HTTP call started / its response was read.
    start: Instant,
    end: Instant,
}

#[derive(Clone)]
struct Sender {
    k: usize,
    label: &'static str,
    client: reqwest::Client,
    url: String,
    token: String,
    room_id: String,
    room: usize,
}

impl Sender {
    async fn send(&self, phase: Option<usize>, i: usize, scheduled: Instant) -> Sent {
        let tag = phase.map_or_else(|| "w".to_owned(), |p| p.to_string());
        let body = json!({
            "query": SEND,
            "variables": {
                "r": self.room_id,
                "b": "live bench message",
                "c": format!("{}-{}-{tag}-{i}", self.label, self.k),
            }
        });
        let request = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&body);
        let start = Instant::now();
        let response = request.send().await.expect("POST /graphql");
        let status = response.status();
        let data: Value = response.json().await.expect("a JSON body");
        let end = Instant::now();
        assert!(
            status.is_success() && data.get("errors").is_none(),
            "sendMessage failed with {status}: {data}"
        );
        let seq = data["data"]["sendMessage"]["seq"]
            .as_i64()
            .unwrap_or_else(|| panic!("no seq in {data}"));
        Sent {
            phase,
            room: self.room,
            seq,
            scheduled,
            start,
            end,
        }
    }

    /// Sends `n` messages one after the other, unpaced.
    async fn warm_up(self, n: usize) -> Vec<Sent> {
        let mut sent = Vec::with_capacity(n);
        for i in 0..n {
            sent.push(self.send(None, i, Instant::now()).await);
        }
        sent
    }

    /// This sender's share of every phase: `rate / senders` msg/s, its ticks staggered by
    /// `k / rate` from the phase start.
    async fn paced(self, senders: usize, start: Instant, phase: Duration) -> Vec<Sent> {
        let mut sent = Vec::new();
        let mut phase_start = start;
        for (p, rate) in rates().iter().enumerate() {
            let rate = f64::from(*rate);
            let phase_end = phase_start + phase;
            let period = Duration::from_secs_f64(senders as f64 / rate);
            let first = phase_start + Duration::from_secs_f64(self.k as f64 / rate);
            let mut ticks = tokio::time::interval_at(first, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut i = 0;
            loop {
                let scheduled = ticks.tick().await;
                if scheduled >= phase_end || Instant::now() >= phase_end {
                    break;
                }
                sent.push(self.send(Some(p), i, scheduled).await);
                i += 1;
            }
            phase_start = phase_end;
        }
        sent
    }
}

// ---------------------------------------------------------------------------------------
// One scenario
// ---------------------------------------------------------------------------------------

struct PhaseResult {
    rate: u32,
    sent: usize,
    achieved: f64,
    latency: Stats,
    http: Stats,
    /// How late the HTTP calls started against the pacer's schedule.
    pacing: Stats,
    /// From the call's start until the projector handed the message to the live feed
    /// (stored, projected, committed), once per message.
    to_projection: Stats,
    /// From the live feed to the subscriber's socket (relay publish, Redis, fan-out,
    /// GraphQL, WebSocket), once per delivery.
    after_projection: Stats,
    /// With the Redis tap: from the live feed until Redis handed the message out (A's
    /// publisher and Redis), once per message; and from there to the subscriber's socket.
    projection_to_redis: Stats,
    after_redis: Stats,
    /// Delivery latency by second of the phase (by send start).
    by_second: Vec<Stats>,
    /// Deliveries read before the sender had the HTTP response.
    before_response: usize,
    /// Deliveries expected (sent x subscribers) but not seen.
    missing: usize,
}

struct RunResult {
    phases: Vec<PhaseResult>,
    /// `next` frames over the whole scenario, warm-up included.
    ws_total: usize,
    /// `next` frames from the start of the measured phases to the end of the drain.
    ws_window: usize,
    duplicates: usize,
    drain: Duration,
    /// Batches the live-feed tap missed (its stamps are then incomplete).
    feed_lagged: u64,
    refused: usize,
    lost: usize,
    /// Relay counters of (sender's instance, subscribers' instance) at the start of the
    /// measured phases and at the end.
    relay_before: Vec<RelayStats>,
    relay_after: Vec<RelayStats>,
}

/// Runs one scenario: the sender on `a`, the subscribers on `b` (the same server for the
/// single-instance baseline).
async fn scenario(
    label: &'static str,
    a: &TestServer,
    b: &TestServer,
    cfg: Config,
    redis_tap_url: Option<String>,
) -> RunResult {
    let alice = a.register(&format!("{label}_sender")).await;
    let mut subs: Vec<Session> = Vec::new();
    for i in 0..cfg.subscribers {
        subs.push(b.register(&format!("{label}_sub_{i}")).await);
    }
    let invited: Vec<&Session> = subs.iter().collect();
    let mut rooms = Vec::new();
    for r in 0..cfg.rooms {
        let room = a
            .create_room(&alice, &format!("live bench {r}"), &invited)
            .await;
        for sub in &subs {
            b.join(sub, &room).await;
        }
        rooms.push(room);
    }

    let counters = Arc::new(Received::default());
    let stop = CancellationToken::new();
    let room_index: HashMap<String, usize> = rooms
        .iter()
        .enumerate()
        .map(|(i, room)| (room.clone(), i))
        .collect();
    let redis_tapped = match redis_tap_url {
        Some(url) => {
            let channels = room_index
                .iter()
                .map(|(room, i)| {
                    let room = RoomId::parse(room).expect("a room id");
                    (a.app.relay.channel_name(&Channel::Room(room)), *i)
                })
                .collect();
            let (ready, subscribed) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(redis_tap(url, channels, ready, stop.clone()));
            subscribed.await.expect("Redis tap subscribed");
            Some(task)
        }
        None => None,
    };
    let tapped = tokio::spawn(tap(a.app.clone(), room_index, stop.clone()));
    let mut readers = Vec::new();
    for sub in &subs {
        let socket = subscribe_all(b.addr, &sub.token, &rooms).await;
        readers.push(tokio::spawn(read(socket, counters.clone(), stop.clone())));
    }

    let senders: Vec<Sender> = (0..cfg.senders)
        .map(|k| Sender {
            k,
            label,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("an HTTP client"),
            url: a.url("/graphql"),
            token: alice.token.clone(),
            room_id: rooms[k % cfg.rooms].clone(),
            room: k % cfg.rooms,
        })
        .collect();

    // Warm-up: opens every keep-alive connection, loads the rooms into the aggregate cache
    // and proves every subscription live: every subscriber must get every warm-up message.
    let mut sent: Vec<Sent> = Vec::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let warm: Vec<_> = senders
        .iter()
        .map(|s| tokio::spawn(s.clone().warm_up(cfg.warmup)))
        .collect();
    for task in warm {
        sent.extend(task.await.expect("warm-up sender"));
    }
    let expected = |sent: usize| sent * cfg.subscribers;
    let deadline = Instant::now() + Duration::from_secs(30);
    while counters.next.load(Ordering::Relaxed) < expected(sent.len()) {
        assert!(
            Instant::now() < deadline,
            "{label}: warm-up not delivered within 30 s: {} of {} frames",
            counters.next.load(Ordering::Relaxed),
            expected(sent.len())
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ws_warm = counters.next.load(Ordering::Relaxed);
    let servers: Vec<&TestServer> = if std::ptr::eq(a, b) {
        vec![a]
    } else {
        vec![a, b]
    };
    let relay_before: Vec<RelayStats> = servers.iter().map(|s| s.app.relay.stats()).collect();

    // Measured phases.
    let start = Instant::now() + Duration::from_millis(100);
    let phase_starts: Vec<Instant> = (0..rates().len())
        .map(|p| start + cfg.phase * p as u32)
        .collect();
    let paced: Vec<_> = senders
        .iter()
        .map(|s| tokio::spawn(s.clone().paced(cfg.senders, start, cfg.phase)))
        .collect();
    for task in paced {
        sent.extend(task.await.expect("paced sender"));
    }
    let sending_done = Instant::now();
    let deadline = sending_done + Duration::from_secs(60);
    while counters.next.load(Ordering::Relaxed) < expected(sent.len()) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = sending_done.elapsed();
    // Anything more (a duplicate) would show now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let relay_after: Vec<RelayStats> = servers.iter().map(|s| s.app.relay.stats()).collect();
    let ws_total = counters.next.load(Ordering::Relaxed);
    stop.cancel();
    let mut receipts: Vec<Vec<Receipt>> = Vec::new();
    for reader in readers {
        receipts.push(reader.await.expect("reader"));
    }
    let (projected, feed_lagged) = tapped.await.expect("feed tap");
    let in_redis: HashMap<(usize, i64), Instant> = match redis_tapped {
        Some(task) => task
            .await
            .expect("Redis tap")
            .iter()
            .map(|r| ((r.room, r.seq), r.at))
            .collect(),
        None => HashMap::new(),
    };
    let projected: HashMap<(usize, i64), Instant> =
        projected.iter().map(|r| ((r.room, r.seq), r.at)).collect();

    // Latencies: receipts joined to sends by (room, seq).
    let by_key: HashMap<(usize, i64), &Sent> = sent.iter().map(|s| ((s.room, s.seq), s)).collect();
    assert_eq!(by_key.len(), sent.len(), "{label}: (room, seq) repeated");
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); rates().len()];
    let mut after_projection: Vec<Vec<Duration>> = vec![Vec::new(); rates().len()];
    let mut after_redis: Vec<Vec<Duration>> = vec![Vec::new(); rates().len()];
    // Per phase, per second of the phase (by send start): the latencies.
    let mut by_second: Vec<Vec<Vec<Duration>>> =
        vec![vec![Vec::new(); cfg.phase.as_secs().max(1) as usize]; rates().len()];
    let mut before_response = vec![0; rates().len()];
    let mut seen_per_phase = vec![0; rates().len()];
    let mut duplicates = 0;
    for subscriber in &receipts {
        let mut seen = std::collections::HashSet::new();
        for r in subscriber {
            if !seen.insert((r.room, r.seq)) {
                duplicates += 1;
                continue;
            }
            let Some(s) = by_key.get(&(r.room, r.seq)) else {
                continue;
            };
            let Some(p) = s.phase else { continue };
            seen_per_phase[p] += 1;
            let latency = r.at.saturating_duration_since(s.start);
            latencies[p].push(latency);
            let second = (s.start.saturating_duration_since(phase_starts[p]).as_secs() as usize)
                .min(by_second[p].len() - 1);
            by_second[p][second].push(latency);
            if let Some(at) = projected.get(&(r.room, r.seq)) {
                after_projection[p].push(r.at.saturating_duration_since(*at));
            }
            if let Some(at) = in_redis.get(&(r.room, r.seq)) {
                after_redis[p].push(r.at.saturating_duration_since(*at));
            }
            if r.at < s.end {
                before_response[p] += 1;
            }
        }
    }
    let phases = rates()
        .iter()
        .enumerate()
        .map(|(p, rate)| {
            let mine: Vec<&Sent> = sent.iter().filter(|s| s.phase == Some(p)).collect();
            PhaseResult {
                rate: *rate,
                sent: mine.len(),
                achieved: mine.len() as f64 / cfg.phase.as_secs_f64(),
                latency: Stats::new(std::mem::take(&mut latencies[p])),
                http: Stats::new(mine.iter().map(|s| s.end - s.start).collect()),
                pacing: Stats::new(
                    mine.iter()
                        .map(|s| s.start.saturating_duration_since(s.scheduled))
                        .collect(),
                ),
                to_projection: Stats::new(
                    mine.iter()
                        .filter_map(|s| projected.get(&(s.room, s.seq)))
                        .zip(mine.iter())
                        .map(|(at, s)| at.saturating_duration_since(s.start))
                        .collect(),
                ),
                after_projection: Stats::new(std::mem::take(&mut after_projection[p])),
                projection_to_redis: Stats::new(
                    mine.iter()
                        .filter_map(|s| {
                            let projected = projected.get(&(s.room, s.seq))?;
                            let in_redis = in_redis.get(&(s.room, s.seq))?;
                            Some(in_redis.saturating_duration_since(*projected))
                        })
                        .collect(),
                ),
                after_redis: Stats::new(std::mem::take(&mut after_redis[p])),
                by_second: std::mem::take(&mut by_second[p])
                    .into_iter()
                    .map(Stats::new)
                    .collect(),
                before_response: before_response[p],
                missing: expected(mine.len()).saturating_sub(seen_per_phase[p]),
            }
        })
        .collect();
    RunResult {
        phases,
        ws_total,
        ws_window: ws_total - ws_warm,
        duplicates,
        drain,
        feed_lagged,
        refused: counters.refused.load(Ordering::Relaxed),
        lost: counters.lost.load(Ordering::Relaxed),
        relay_before,
        relay_after,
    }
}

// ---------------------------------------------------------------------------------------
// Set-ups
// ---------------------------------------------------------------------------------------

/// A and B over one database and one Redis prefix, A's projector the active one (A starts
/// alone and publishes a room's creation before B starts).
async fn two_instances() -> (TestServer, TestServer) {
    admin().await; // fails with a clear message when Redis is unreachable
    let db = TestDb::new().await;
    let log = EventLog::postgres(PostgresLog::new(db.pool.clone()));
    let prefix = unique_prefix();
    let url = redis_url();
    let a = TestServer::on_log(
        log.clone(),
        Some(db),
        redis_options(&url, &prefix, PresenceConfig::default().ttl).await,
        WsConfig::default(),
    )
    .await;
    let probe = a.register("probe").await;
    a.create_room(&probe, "probe", &[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.app.relay.stats().published == 0 {
        assert!(
            Instant::now() < deadline,
            "A's projector did not publish within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = TestServer::on_log(
        log,
        None,
        redis_options(&url, &prefix, PresenceConfig::default().ttl).await,
        WsConfig::default(),
    )
    .await;
    (a, b)
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

fn print_run(name: &str, run: &RunResult) {
    println!("-- {name}");
    println!(
        "{:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11} {:>9} {:>8}",
        "target/s",
        "sent",
        "achieved",
        "lat p50",
        "lat p99",
        "lat max",
        "samples",
        "http p50",
        "http p99",
        "late p99",
        "<resp",
        "missing"
    );
    for p in &run.phases {
        println!(
            "{:>8} {:>7} {:>9.1} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>10.3} {:>10.3} {:>11.3} {:>9} {:>8}",
            p.rate,
            p.sent,
            p.achieved,
            ms(p.latency.p50),
            ms(p.latency.p99),
            ms(p.latency.max),
            p.latency.n,
            ms(p.http.p50),
            ms(p.http.p99),
            ms(p.pacing.p99),
            p.before_response,
            p.missing,
        );
    }
    println!(
        "   (ms; lat = subscriber read the frame - sendMessage call started; http = the \
         sendMessage round trip; late = call start behind the pacer's schedule; <resp = \
         deliveries read before the sender had its HTTP response)"
    );
    for p in &run.phases {
        println!(
            "   {:>5}/s: send start -> projected p50 {:.3} p99 {:.3} max {:.3}; projected -> \
             subscriber p50 {:.3} p99 {:.3} max {:.3}",
            p.rate,
            ms(p.to_projection.p50),
            ms(p.to_projection.p99),
            ms(p.to_projection.max),
            ms(p.after_projection.p50),
            ms(p.after_projection.p99),
            ms(p.after_projection.max),
        );
        if p.after_redis.n > 0 {
            println!(
                "   {:>5}/s: (Redis tap) projected -> out of Redis p50 {:.3} p99 {:.3} max {:.3}; \
                 out of Redis -> subscriber p50 {:.3} p99 {:.3} max {:.3}",
                p.rate,
                ms(p.projection_to_redis.p50),
                ms(p.projection_to_redis.p99),
                ms(p.projection_to_redis.max),
                ms(p.after_redis.p50),
                ms(p.after_redis.p99),
                ms(p.after_redis.max),
            );
        }
        let seconds: Vec<String> = p
            .by_second
            .iter()
            .map(|s| format!("{:.1}/{:.0}", ms(s.p50), ms(s.max)))
            .collect();
        println!(
            "   {:>5}/s: latency p50/max by second: {}",
            p.rate,
            seconds.join(" ")
        );
    }
    println!(
        "   WebSocket `next` frames: {} in the measured window (+ drain {:.0} ms), {} in all \
         incl. warm-up; duplicates {}, refused {}, connections lost {}, live-feed tap \
         lagged {}",
        run.ws_window,
        ms(run.drain),
        run.ws_total,
        run.duplicates,
        run.refused,
        run.lost,
        run.feed_lagged
    );
}

fn delta(after: &RelayStats, before: &RelayStats) -> RelayStats {
    RelayStats {
        published: after.published - before.published,
        publish_errors: after.publish_errors - before.publish_errors,
        publish_commands: after.publish_commands - before.publish_commands,
        subscribe_commands: after.subscribe_commands - before.subscribe_commands,
        unsubscribe_commands: after.unsubscribe_commands - before.unsubscribe_commands,
        received: after.received - before.received,
        deliveries: after.deliveries - before.deliveries,
        disconnects: after.disconnects - before.disconnects,
        resyncs: after.resyncs - before.resyncs,
        lagged: after.lagged - before.lagged,
        malformed: after.malformed - before.malformed,
    }
}

fn print_relay(names: &[&str], stats: &[RelayStats], ws: usize, what: &str) {
    println!("   {what}:");
    println!(
        "   {:<14} {:>9} {:>9} {:>9} {:>7} {:>9} {:>10} {:>6} {:>7} {:>6} {:>7}",
        "instance",
        "published",
        "PUBLISH",
        "SUBSCRIBE",
        "UNSUB",
        "received",
        "deliveries",
        "lagged",
        "resyncs",
        "errors",
        "disconn"
    );
    let mut sum = RelayStats::default();
    for (name, s) in names.iter().zip(stats) {
        println!(
            "   {:<14} {:>9} {:>9} {:>9} {:>7} {:>9} {:>10} {:>6} {:>7} {:>6} {:>7}",
            name,
            s.published,
            s.publish_commands,
            s.subscribe_commands,
            s.unsubscribe_commands,
            s.received,
            s.deliveries,
            s.lagged,
            s.resyncs,
            s.publish_errors,
            s.disconnects
        );
        sum = RelayStats {
            publish_commands: sum.publish_commands + s.publish_commands,
            subscribe_commands: sum.subscribe_commands + s.subscribe_commands,
            unsubscribe_commands: sum.unsubscribe_commands + s.unsubscribe_commands,
            deliveries: sum.deliveries + s.deliveries,
            ..sum
        };
    }
    println!(
        "   Redis commands (A+B) {} / WebSocket messages delivered {} = {:.4} per delivered \
         message (PUBLISH {}, SUBSCRIBE {}, UNSUBSCRIBE {}; relay deliveries {})",
        sum.redis_commands(),
        ws,
        sum.redis_commands() as f64 / ws.max(1) as f64,
        sum.publish_commands,
        sum.subscribe_commands,
        sum.unsubscribe_commands,
        sum.deliveries,
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let cfg = Config {
        subscribers: env_usize("PARLEY_BENCH_SUBSCRIBERS", 10),
        rooms: env_usize("PARLEY_BENCH_ROOMS", 16).max(1),
        senders: env_usize("PARLEY_BENCH_SENDERS", 32).max(1),
        warmup: env_usize("PARLEY_BENCH_WARMUP", 20).max(1),
        phase: Duration::from_secs(env_usize("PARLEY_BENCH_PHASE_SECS", 10) as u64),
    };
    println!(
        "== live delivery: {} subscribers x {} rooms (one WebSocket each, one subscription per \
         room), {} paced senders over HTTP keep-alive, {:?} at each of {:?} msg/s; PostgreSQL, \
         in-process servers, {} cores ==",
        cfg.subscribers,
        cfg.rooms,
        cfg.senders,
        cfg.phase,
        rates(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );

    // 1. Baseline: one instance, in-process relay.
    let single = TestServer::start(Store::Postgres).await;
    let base = scenario("single", &single, &single, cfg, None).await;
    single.app.stop().await; // the projector, before the database is dropped
    single.stop().await;
    print_run(
        "single instance (in-process relay; sender and subscribers on it)",
        &base,
    );

    // 2. Cross instance: sender on A, subscribers on B, over Redis.
    let (a, b) = two_instances().await;
    let redis_tap = std::env::var("PARLEY_BENCH_REDIS_TAP").is_ok_and(|v| v == "1");
    let cross = scenario("cross", &a, &b, cfg, redis_tap.then(redis_url)).await;
    b.app.stop().await;
    a.app.stop().await;
    b.stop().await;
    a.stop().await;
    print_run(
        "cross instance (Redis relay; sender on A, subscribers on B)",
        &cross,
    );
    let window: Vec<RelayStats> = cross
        .relay_after
        .iter()
        .zip(&cross.relay_before)
        .map(|(after, before)| delta(after, before))
        .collect();
    print_relay(
        &["A (sender)", "B (subs)"],
        &window,
        cross.ws_window,
        "relay, measured window (phases + drain)",
    );
    print_relay(
        &["A (sender)", "B (subs)"],
        &cross.relay_after,
        cross.ws_total,
        "relay, whole run since the instances started (set-up, warm-up, phases)",
    );

    println!("-- cross / single");
    println!("{:>8} {:>9} {:>9} {:>9}", "target/s", "p50", "p99", "max");
    for (c, s) in cross.phases.iter().zip(&base.phases) {
        println!(
            "{:>8} {:>8.2}x {:>8.2}x {:>8.2}x",
            c.rate,
            ms(c.latency.p50) / ms(s.latency.p50),
            ms(c.latency.p99) / ms(s.latency.p99),
            ms(c.latency.max) / ms(s.latency.max),
        );
    }
}
