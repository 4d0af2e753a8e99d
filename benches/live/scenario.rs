//! One scenario: warm-up, then each paced phase, measured.

#[allow(unused_imports)]
use super::*;

pub(crate) struct PhaseResult {
    pub(crate) rate: u32,
    pub(crate) sent: usize,
    pub(crate) achieved: f64,
    pub(crate) latency: Stats,
    pub(crate) http: Stats,
    /// How late the HTTP calls started against the pacer's schedule.
    pub(crate) pacing: Stats,
    /// From the call's start until the projector handed the message to the live feed
    /// (stored, projected, committed), once per message.
    pub(crate) to_projection: Stats,
    /// From the live feed to the subscriber's socket (relay publish, Redis, fan-out,
    /// GraphQL, WebSocket), once per delivery.
    pub(crate) after_projection: Stats,
    /// With the Redis tap: from the live feed until Redis handed the message out (A's
    /// publisher and Redis), once per message; and from there to the subscriber's socket.
    pub(crate) projection_to_redis: Stats,
    pub(crate) after_redis: Stats,
    /// Delivery latency by second of the phase (by send start).
    pub(crate) by_second: Vec<Stats>,
    /// Deliveries read before the sender had the HTTP response.
    pub(crate) before_response: usize,
    /// Deliveries expected (sent x subscribers) but not seen.
    pub(crate) missing: usize,
}

pub(crate) struct RunResult {
    pub(crate) phases: Vec<PhaseResult>,
    /// `next` frames over the whole scenario, warm-up included.
    pub(crate) ws_total: usize,
    /// `next` frames from the start of the measured phases to the end of the drain.
    pub(crate) ws_window: usize,
    pub(crate) duplicates: usize,
    pub(crate) drain: Duration,
    /// Batches the live-feed tap missed (its stamps are then incomplete).
    pub(crate) feed_lagged: u64,
    pub(crate) refused: usize,
    pub(crate) lost: usize,
    /// Relay counters of (sender's instance, subscribers' instance) at the start of the
    /// measured phases and at the end.
    pub(crate) relay_before: Vec<RelayStats>,
    pub(crate) relay_after: Vec<RelayStats>,
}

/// Runs one scenario: the sender on `a`, the subscribers on `b` (the same server for the
/// single-instance baseline).
pub(crate) async fn scenario(
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
