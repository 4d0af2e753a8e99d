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
//!
//! The parts, one module each: `stats`, `subscribers` (and the taps), `senders`, `scenario`,
//! `setup` (the two instances) and `report`.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parley::relay::{Channel, PresenceConfig, RelayStats};
use parley::store::{EventLog, PostgresLog};
use parley::ws::WsConfig;
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

pub(crate) const SEND: &str = "mutation($r: ID!, $b: String!, $c: String!) { sendMessage(roomId: $r, body: $b, clientMsgId: $c) { seq } }";
pub(crate) const MESSAGES: &str = "subscription($r: ID!) { messages(roomId: $r) { seq } }";
/// The paced phases, msg/s: `PARLEY_BENCH_RATES` (comma-separated), default 100,1000,2000.
pub(crate) fn rates() -> &'static [u32] {
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

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub(crate) subscribers: usize,
    pub(crate) rooms: usize,
    pub(crate) senders: usize,
    pub(crate) warmup: usize,
    pub(crate) phase: Duration,
}

mod report;
mod scenario;
mod senders;
mod setup;
mod stats;
mod subscribers;

use report::*;
use scenario::*;
use senders::*;
use setup::*;
use stats::*;
use subscribers::*;

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
