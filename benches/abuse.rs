//! Hostile-client load against the real `parley` binary (PostgreSQL store), each number with
//! the baseline of the same run:
//!
//! 1. guesses an attacker gets against one account in one minute (all default limits);
//! 2. a well-behaved client's p99 (`{ me { username } }`, from another address) unloaded,
//!    then while an attacker hammers logins; the ratio (per-address request budget off: the
//!    probe sends back to back); once with refused sign-ins answered at once (as before
//!    `PARLEY_LOGIN_FAILURE_DELAY_MS`) and once with the default delay;
//! 3. server RSS and `{ __typename }` p99 during 200 concurrent registrations (registration
//!    budget off, so every one reaches the hashing stage), with the unloaded p99 as baseline.
//!
//! `cargo bench --bench abuse` (release). `ABUSE_GUESS_SECS` shortens phase 1 (default 60).
//! Addresses: the server listens on 127.0.0.1; the good client comes from 127.0.0.2, the
//! attacker from 127.0.0.3 (all loopback), so per-address budgets tell them apart.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SECRET: &str = "bench-secret-that-is-long-enough-0123456789";
const LOGIN: &str =
    "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { token } }";
const REGISTER: &str =
    "mutation($u: String!, $p: String!) { register(username: $u, password: $p) { token } }";

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(db: &support::TestDb, extra_env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
        command
            .env_remove("REDIS_URL")
            .env("DATABASE_URL", db.url())
            .env("PARLEY_JWT_SECRET", SECRET)
            .env("PARLEY_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let child = command.spawn().expect("starting parley");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/graphql"),
        }
    }

    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    async fn ready(&self) {
        let client = client_from(1);
        let health = self.url.replace("/graphql", "/healthz");
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.get(&health).send().await.is_err() {
            assert!(Instant::now() < deadline, "the server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client whose connections come from 127.0.0.`last`.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

async fn post(
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
    match request.send().await {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

fn code(body: &Value) -> String {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or(if body["data"].is_object() {
            "OK"
        } else {
            "NONE"
        })
        .to_owned()
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

async fn latencies(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    query: &str,
    n: usize,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let body = post(client, url, token, query, json!({})).await;
        assert_eq!(code(&body), "OK", "{body}");
        samples.push(started.elapsed());
    }
    samples
}

/// Hammers logins against `victim` with `tasks` concurrent loops until `stop`; returns
/// (password checks answered UNAUTHENTICATED, refused RATE_LIMITED, other).
fn attacker(
    url: String,
    victim: &str,
    tasks: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, u64)> {
    let victim = victim.to_owned();
    tokio::spawn(async move {
        let checked = Arc::new(AtomicU64::new(0));
        let limited = Arc::new(AtomicU64::new(0));
        let other = Arc::new(AtomicU64::new(0));
        let mut loops = Vec::new();
        for t in 0..tasks {
            let (url, victim, stop) = (url.clone(), victim.clone(), stop.clone());
            let (checked, limited, other) = (checked.clone(), limited.clone(), other.clone());
            loops.push(tokio::spawn(async move {
                let client = client_from(3);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = post(
                        &client,
                        &url,
                        None,
                        LOGIN,
                        json!({ "u": victim, "p": format!("guess-{t}-{i:08}") }),
                    )
                    .await;
                    match code(&body).as_str() {
                        "UNAUTHENTICATED" => checked.fetch_add(1, Ordering::Relaxed),
                        "RATE_LIMITED" => limited.fetch_add(1, Ordering::Relaxed),
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        for l in loops {
            let _ = l.await;
        }
        (
            checked.load(Ordering::Relaxed),
            limited.load(Ordering::Relaxed),
            other.load(Ordering::Relaxed),
        )
    })
}

async fn register(url: &str, client: &reqwest::Client, name: &str) -> String {
    let body = post(
        client,
        url,
        None,
        REGISTER,
        json!({ "u": name, "p": "password-123" }),
    )
    .await;
    body["data"]["register"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("register {name}: {body}"))
        .to_owned()
}

/// Phase 2: the good client's p99, unloaded and then while an attacker hammers logins, on
/// a server whose refused sign-ins are answered after `delay_ms`.
async fn good_client_under_attack(delay_ms: &str, label: &str) {
    // The probe sends thousands of requests back to back, more than a person would: the
    // per-address request budget is off here (the login budgets are the defaults).
    let db = support::TestDb::new().await;
    let server = Server::start(
        &db,
        &[
            ("PARLEY_RATE_REQUESTS_PER_IP", "off"),
            ("PARLEY_LOGIN_FAILURE_DELAY_MS", delay_ms),
        ],
    );
    server.ready().await;
    let good = client_from(2);
    let token = register(&server.url, &good, "gooduser").await;
    register(&server.url, &good, "victim").await;
    let me = "{ me { username } }";
    // Until the new user is in the read model (the projector is a few ms behind).
    let deadline = Instant::now() + Duration::from_secs(30);
    while code(&post(&good, &server.url, Some(&token), me, json!({})).await) != "OK" {
        assert!(Instant::now() < deadline, "the user never showed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies(&good, &server.url, Some(&token), me, 200).await; // warm-up
    let n = 2000;
    let unloaded = p99(latencies(&good, &server.url, Some(&token), me, n).await);
    let stop = Arc::new(AtomicBool::new(false));
    let attack = attacker(server.url.clone(), "victim", 16, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = p99(latencies(&good, &server.url, Some(&token), me, n).await);
    stop.store(true, Ordering::Relaxed);
    let (checked, limited, other) = attack.await.unwrap();
    println!(
        "good client p99 ({n} × `me`), {label}: unloaded {:.2} ms, while an attacker hammers logins {:.2} ms: ratio {:.2} (goal ≤ 1.2); attacker meanwhile: {checked} checks, {limited} RATE_LIMITED, {other} other",
        ms(unloaded),
        ms(loaded),
        loaded.as_secs_f64() / unloaded.as_secs_f64()
    );
}

async fn guesses_and_good_client() {
    // 2. With refused sign-ins answered at once (as before the delay) and then after the
    //    default delay, each on a fresh server.
    for (delay_ms, label) in [
        ("0", "refusals answered at once"),
        ("1000", "default 1 s refusal delay"),
    ] {
        good_client_under_attack(delay_ms, label).await;
    }
    // 1. Guesses against one fresh account in a fresh server over a full window.
    let secs: u64 = std::env::var("ABUSE_GUESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let db = support::TestDb::new().await;
    let server = Server::start(&db, &[]);
    server.ready().await;
    let good = client_from(2);
    register(&server.url, &good, "victim").await;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let attack = attacker(server.url.clone(), "victim", 16, stop.clone());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (checked, limited, other) = attack.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "guesses against one account in {elapsed:.0} s with default limits: {checked} password checks ({:.1}/min; goal ≤ 10), {limited} refused RATE_LIMITED, {other} other (HTTP 429 and errors)",
        checked as f64 * 60.0 / elapsed
    );
}

async fn registration_burst() {
    let db = support::TestDb::new().await;
    let server = Server::start(
        &db,
        &[
            ("PARLEY_RATE_REGISTRATIONS_PER_IP", "off"),
            ("PARLEY_RATE_REQUESTS_PER_IP", "off"),
        ],
    );
    server.ready().await;
    let probe = client_from(2);
    let probe_query = "{ __typename }";
    latencies(&probe, &server.url, None, probe_query, 200).await;
    let unloaded = p99(latencies(&probe, &server.url, None, probe_query, 1000).await);
    let rss_before = server.rss_mb();

    let burst = 200;
    let peak = Arc::new(std::sync::Mutex::new(rss_before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        let pid = server.child.id();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kb) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(kb / 1024.0);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let mut registrations = Vec::new();
    for i in 0..burst {
        let url = server.url.clone();
        registrations.push(tokio::spawn(async move {
            let client = client_from(4);
            let body = post(
                &client,
                &url,
                None,
                REGISTER,
                json!({ "u": format!("burst_{i:04}"), "p": "password-123" }),
            )
            .await;
            code(&body)
        }));
    }
    // The probe runs while the burst is in flight.
    let mut during = Vec::new();
    while registrations.iter().any(|r| !r.is_finished()) {
        let started = Instant::now();
        let body = post(&probe, &server.url, None, probe_query, json!({})).await;
        assert_eq!(code(&body), "OK");
        during.push(started.elapsed());
    }
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for r in registrations {
        *outcomes.entry(r.await.unwrap()).or_default() += 1;
    }
    let burst_time = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = server.rss_mb();
    let peak = *peak.lock().unwrap();
    let samples = during.len();
    let during = if during.is_empty() {
        Duration::ZERO
    } else {
        p99(during)
    };
    println!(
        "{burst} concurrent registrations (budget off): outcomes {outcomes:?} in {:.1} s; server RSS {rss_before:.0} MB before, {peak:.0} MB peak (goal < 300), {rss_after:.0} MB after; `{{ __typename }}` p99 unloaded {:.2} ms, during the burst {:.2} ms over {samples} probes (goal < 50 ms): ratio {:.2}",
        burst_time.as_secs_f64(),
        ms(unloaded),
        ms(during),
        during.as_secs_f64() / unloaded.as_secs_f64()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    registration_burst().await;
    guesses_and_good_client().await;
}
