//! Relay throughput and cross-instance delivery latency: one Redis server vs a 3-master
//! Redis Cluster (sharded pub/sub), same load, same run.
//!
//! `cargo bench --bench relay_cluster` starts its own `redis-server` and its own 3-master
//! cluster (see `tests/support/redis_cluster.rs`; never the shared Redis). For each backend,
//! three relays play three instances: A publishes, B and C each subscribe every room (one
//! `Subscription` per room, as one WebSocket subscriber per room would). Per backend:
//! 1. throughput: A publishes batches (one message per room, one `publish_all` per batch,
//!    as the projector does) as fast as Redis takes them for a fixed time; delivered
//!    messages/s at B and C;
//! 2. latency: a fixed offered rate; publish-to-receive p50/p99 at B and C;
//! 3. Redis CPU per node (user + system from `/proc/<pid>/stat`) during each phase, as a
//!    share of one core.
//!
//! Then the ratios cluster / single. Knobs: `PARLEY_BENCH_ROOMS` (64), `PARLEY_BENCH_SECS`
//! (3 per phase), `PARLEY_BENCH_RATE` (2,000 msg/s offered in the latency phase).
//! Note: on a small machine the three cluster nodes, the single server and this process
//! share the same cores, so the cluster cannot show more total capacity than one core's
//! worth here; the per-node CPU split is what shows how the load spreads.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley::relay::{Channel, Relay, RelayConfig, RelayItem};
use parley_domain::RoomId;
use serde_json::json;
use support::redis::unique_prefix;
use support::redis_cluster::{RedisCluster, RedisServer};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, Default)]
struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let at = |q: f64| samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
        Self {
            p50: at(0.50),
            p99: at(0.99),
            max: samples[n - 1],
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Clone, Debug, Default)]
struct Outcome {
    throughput_sent: f64,
    throughput_delivered: f64,
    throughput_cpu: Vec<f64>,
    latency_rate: f64,
    latency: Latency,
    latency_delivered: usize,
    latency_expected: usize,
    latency_cpu: Vec<f64>,
    lagged: u64,
}

/// Subscribers of one instance: one task per room, counting and timing what arrives.
struct Listeners {
    delivered: Arc<AtomicU64>,
    samples: Arc<Mutex<Vec<Duration>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn listen(relay: &Relay, rooms: &[RoomId], origin: Instant) -> Listeners {
    let delivered = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for room in rooms {
        let mut sub = relay
            .subscribe(&Channel::Room(*room))
            .await
            .expect("subscribe");
        let delivered = delivered.clone();
        let samples = samples.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = Vec::new();
            while let Some(item) = sub.recv().await {
                let RelayItem::Message(relayed) = item else {
                    continue;
                };
                let value = relayed.value();
                delivered.fetch_add(1, Ordering::Relaxed);
                if let (Some(sent), Some(true)) = (value["t"].as_u64(), value["timed"].as_bool()) {
                    let now = origin.elapsed().as_micros() as u64;
                    local.push(Duration::from_micros(now.saturating_sub(sent)));
                    if local.len() >= 256 {
                        samples.lock().expect("samples").extend(local.drain(..));
                    }
                }
                if value["end"].as_bool() == Some(true) {
                    break;
                }
            }
            samples.lock().expect("samples").extend(local);
        }));
    }
    Listeners {
        delivered,
        samples,
        tasks,
    }
}

/// CPU share (of one core) each Redis process used between two readings over `wall`.
fn cpu_shares(before: &[Duration], after: &[Duration], wall: Duration) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| a.saturating_sub(*b).as_secs_f64() / wall.as_secs_f64())
        .collect()
}

async fn run(
    label: &str,
    url: &str,
    cpu: &dyn Fn() -> Vec<Duration>,
    rooms_n: usize,
    phase: Duration,
    rate: u64,
) -> Outcome {
    let prefix = unique_prefix();
    let config = RelayConfig {
        buffer: 8192,
        timeout: Duration::from_secs(5),
        ..RelayConfig::with_prefix(&prefix)
    };
    let a = Relay::redis(url, config.clone()).await.expect("relay A");
    let b = Relay::redis(url, config.clone()).await.expect("relay B");
    let c = Relay::redis(url, config).await.expect("relay C");
    let rooms: Vec<RoomId> = (0..rooms_n).map(|_| RoomId::new()).collect();
    let origin = Instant::now();
    let mut outcome = Outcome::default();

    // 1. Throughput: publish as fast as Redis accepts, for `phase`.
    let listeners = [
        listen(&b, &rooms, origin).await,
        listen(&c, &rooms, origin).await,
    ];
    let body = "x".repeat(200);
    let cpu_before = cpu();
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < phase {
        let batch: Vec<(Channel, serde_json::Value)> = rooms
            .iter()
            .map(|room| (Channel::Room(*room), json!({ "body": body, "n": sent })))
            .collect();
        a.publish_all(&batch).await.expect("publish");
        sent += batch.len() as u64;
    }
    let end: Vec<(Channel, serde_json::Value)> = rooms
        .iter()
        .map(|room| (Channel::Room(*room), json!({ "end": true })))
        .collect();
    a.publish_all(&end).await.expect("publish end");
    for listener in &listeners {
        for task in &listener.tasks {
            while !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let wall = started.elapsed();
    outcome.throughput_cpu = cpu_shares(&cpu_before, &cpu(), wall);
    let delivered: u64 = listeners
        .iter()
        .map(|l| l.delivered.load(Ordering::Relaxed) - rooms_n as u64)
        .sum();
    outcome.throughput_sent = sent as f64 / wall.as_secs_f64();
    outcome.throughput_delivered = delivered as f64 / wall.as_secs_f64();
    let lost = (sent * 2).saturating_sub(delivered);
    if lost > 0 {
        println!("{label:>8}: {lost} messages not delivered in the throughput phase (lagged)");
    }

    // 2. Latency at a fixed offered rate: one batch (a message to `per_tick` rooms) per ms.
    let listeners = [
        listen(&b, &rooms, origin).await,
        listen(&c, &rooms, origin).await,
    ];
    let per_tick = (rate / 1000).max(1) as usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let cpu_before = cpu();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut next_room = 0usize;
    while started.elapsed() < phase {
        ticker.tick().await;
        let t = origin.elapsed().as_micros() as u64;
        let batch: Vec<(Channel, serde_json::Value)> = (0..per_tick)
            .map(|_| {
                next_room = (next_room + 1) % rooms.len();
                (
                    Channel::Room(rooms[next_room]),
                    json!({ "body": body, "t": t, "timed": true }),
                )
            })
            .collect();
        a.publish_all(&batch).await.expect("publish");
        sent += batch.len();
    }
    let wall = started.elapsed();
    a.publish_all(&end).await.expect("publish end");
    let mut samples = Vec::new();
    for listener in listeners {
        for task in listener.tasks {
            task.await.expect("listener");
        }
        samples.extend(listener.samples.lock().expect("samples").drain(..));
    }
    outcome.latency_cpu = cpu_shares(&cpu_before, &cpu(), wall);
    outcome.latency_rate = sent as f64 / wall.as_secs_f64();
    outcome.latency_expected = sent * 2;
    outcome.latency_delivered = samples.len();
    outcome.latency = Latency::of(samples);
    outcome.lagged = b.stats().lagged + c.stats().lagged;

    println!(
        "{label:>8}: throughput {:>9.0} msg/s published, {:>9.0} msg/s delivered (B+C); Redis CPU {:?}",
        outcome.throughput_sent,
        outcome.throughput_delivered,
        outcome
            .throughput_cpu
            .iter()
            .map(|s| format!("{:.0}%", s * 100.0))
            .collect::<Vec<_>>(),
    );
    println!(
        "{label:>8}: latency at {:>6.0} msg/s offered: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} of {} delivered, lagged {}); Redis CPU {:?}",
        outcome.latency_rate,
        ms(outcome.latency.p50),
        ms(outcome.latency.p99),
        ms(outcome.latency.max),
        outcome.latency_delivered,
        outcome.latency_expected,
        outcome.lagged,
        outcome
            .latency_cpu
            .iter()
            .map(|s| format!("{:.0}%", s * 100.0))
            .collect::<Vec<_>>(),
    );
    outcome
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rooms = env_u64("PARLEY_BENCH_ROOMS", 64) as usize;
    let phase = Duration::from_secs(env_u64("PARLEY_BENCH_SECS", 3));
    let rate = env_u64("PARLEY_BENCH_RATE", 2_000);
    println!(
        "relay bench: 3 relays (A publishes; B and C subscribe each of {rooms} rooms), {phase:?} per phase, latency phase at {rate} msg/s"
    );

    let single = RedisServer::start().await;
    let cluster = RedisCluster::start(3).await;

    let single_cpu = || vec![single.cpu_time().unwrap_or_default()];
    let cluster_cpu = || {
        (0..3)
            .map(|i| cluster.cpu_time(i).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let s = run("single", &single.url(), &single_cpu, rooms, phase, rate).await;
    let c = run("cluster", &cluster.url(), &cluster_cpu, rooms, phase, rate).await;

    println!();
    println!(
        "ratio cluster/single: throughput (delivered) {:.2}x, latency p50 {:.2}x, p99 {:.2}x",
        c.throughput_delivered / s.throughput_delivered,
        ms(c.latency.p50) / ms(s.latency.p50),
        ms(c.latency.p99) / ms(s.latency.p99),
    );
    let total = |v: &[f64]| v.iter().sum::<f64>();
    println!(
        "Redis CPU per 1,000 delivered msg/s (throughput phase): single {:.1}% of a core, cluster {:.1}% summed over nodes (busiest node {:.1}%)",
        total(&s.throughput_cpu) * 100.0 / (s.throughput_delivered / 1000.0),
        total(&c.throughput_cpu) * 100.0 / (c.throughput_delivered / 1000.0),
        c.throughput_cpu.iter().cloned().fold(0.0, f64::max) * 100.0
            / (c.throughput_delivered / 1000.0),
    );
}
