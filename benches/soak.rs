//! Soak: mixed load for a long while with faults injected at random, then the same checks
//! as `tests/faults.rs` (acked = stored, no duplicate, contiguous seq per room, exactly-once
//! delivery after each subscriber's cursor) and the recovery time of every fault.
//!
//! `cargo bench --bench soak` (add `--profile dev` to skip the release build). Settings:
//! `PARLEY_SOAK_SECS` (600) of faults, `PARLEY_SOAK_SEED` (random, printed) for the choice
//! and timing of faults. Everything is bounded: the run stops injecting after the duration,
//! and each fault must recover within 60 s or the run fails.
//!
//! The deployment is `tests/support/cluster.rs`: a private PostgreSQL and Redis, two real
//! `parley` processes. The load: 4 senders (two per instance), 4 subscribers (two per
//! instance) and one subscriber that never reads until the end, in 2 rooms. Faults, one at a
//! time, 3–12 s apart: `kill -9` of a random instance (restarted 1–3 s later), `kill -9` of
//! PostgreSQL (restarted at once), PostgreSQL paused 2–10 s, `kill -9` of Redis (restarted
//! 1–5 s later), the projector's database connection black-holed (until another instance
//! has taken over, then let through again).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::cluster::Cluster;
use support::load::{set_up, Load, LoadSpec};
use support::proxy::Mode;
use tokio::time::{sleep, Instant};

const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let duration = Duration::from_secs(env_u64("PARLEY_SOAK_SECS").unwrap_or(600));
    let seed = env_u64("PARLEY_SOAK_SEED").unwrap_or_else(|| rand::rng().random());
    let mut rng = StdRng::seed_from_u64(seed);
    println!(
        "soak: {} s of faults, seed {seed} (PARLEY_SOAK_SEED={seed} repeats it)",
        duration.as_secs()
    );

    let mut cluster = Cluster::start(2).await;
    let (users, rooms) = set_up(cluster.instances[0].addr, 2).await;
    let load = Load::start(
        cluster.endpoints(),
        users,
        rooms,
        LoadSpec {
            senders: vec![0, 1, 0, 1],
            subscribers: vec![0, 1, 0, 1],
            slow_subscribers: vec![1],
            pace: Duration::from_millis(20),
            body_len: 64,
            tag: "soak".to_owned(),
        },
    )
    .await;
    load.wait_acks(100, RECOVERY_LIMIT).await;

    let started = Instant::now();
    let mut recoveries: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    while started.elapsed() < duration {
        sleep(Duration::from_millis(rng.random_range(3_000..12_000))).await;
        let (kind, heal) = match rng.random_range(0..5) {
            0 => {
                let i = rng.random_range(0..cluster.instances.len());
                let t = Instant::now();
                cluster.instances[i].kill9().await;
                sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
                cluster.instances[i].restart().await;
                ("kill -9 of an instance (from the kill)", t)
            }
            1 => {
                cluster.pg.kill9().await;
                cluster.pg.restart().await;
                (
                    "PostgreSQL kill -9 + restart (from back up)",
                    Instant::now(),
                )
            }
            2 => {
                cluster.pg.pause();
                sleep(Duration::from_millis(rng.random_range(2_000..10_000))).await;
                cluster.pg.resume();
                ("PostgreSQL paused 2–10 s (from SIGCONT)", Instant::now())
            }
            3 => {
                cluster.redis.kill9().await;
                sleep(Duration::from_millis(rng.random_range(1_000..5_000))).await;
                cluster.redis.restart().await;
                ("Redis kill -9, down 1–5 s (from back up)", Instant::now())
            }
            _ => {
                let Some(holder) = cluster.projector().await else {
                    continue;
                };
                let proxy = &cluster.pg_proxies[holder.instance];
                if !proxy.set_connection(holder.client_port, Mode::BlackHole) {
                    continue;
                }
                let t = Instant::now();
                cluster
                    .wait_for_projector(|h| h.instance != holder.instance, RECOVERY_LIMIT)
                    .await;
                proxy.set_connection(holder.client_port, Mode::Pass);
                (
                    "projector's connection black-holed (from the black hole)",
                    t,
                )
            }
        };
        let recovery = load.wait_recovery(heal, RECOVERY_LIMIT).await;
        println!(
            "  +{:>5} s  {kind}: recovered in {} s",
            started.elapsed().as_secs(),
            secs(recovery)
        );
        recoveries.entry(kind).or_default().push(recovery);
    }

    load.wait_acks(50, RECOVERY_LIMIT).await;
    let finished = load.finish(Duration::from_secs(300)).await;
    let verified = finished.verify().await;
    let j = &finished.journal;
    println!(
        "soak: {} s, {} faults; {} acked = {} stored, {} delivered exactly once (one \
         subscriber read nothing until the end), {} resubscriptions",
        started.elapsed().as_secs(),
        recoveries.values().map(Vec::len).sum::<usize>(),
        j.acked(),
        verified.stored,
        verified.delivered,
        j.reconnects()
    );
    println!("| fault | count | recovery p50 | recovery max |");
    println!("|---|---|---|---|");
    for (kind, mut times) in recoveries {
        times.sort();
        println!(
            "| {kind} | {} | {} s | {} s |",
            times.len(),
            secs(times[times.len() / 2]),
            secs(*times.last().expect("one"))
        );
    }
    println!("clients saw: {}", j.error_summary());
}
