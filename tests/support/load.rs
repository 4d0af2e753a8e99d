//! Real clients under faults, and what they prove.
//!
//! **Senders** send `sendMessage` over HTTP in a loop; on any failure (connection refused or
//! reset, a timeout, a non-200 answer, an `INTERNAL` or other error code) they retry the
//! *same* `clientMsgId` after 100 ms on the next instance, until it is acknowledged (or give up after [`GIVE_UP`], failing the test).
//! **Subscribers** hold one graphql-transport-ws connection with a `messages(roomId, after)`
//! subscription per room; when the connection or a subscription ends, or nothing at all
//! (not even a ping) arrives for [`SILENCE`], they reconnect (to the next instance if the
//! connect fails) and resubscribe with `after:` the last `seq` they got. A *slow* subscriber
//! subscribes with a 4 KiB receive buffer and then does not read at all until the load is
//! over.
//!
//! Everything they see goes into a [`Journal`] with timestamps. [`verify`] then reads the
//! stored history through the API and asserts: acked = stored (same messages, same seq),
//! no duplicate, seq contiguous per room, and every subscriber got every message after its
//! cursor exactly once, in order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

pub const SEND: &str = "mutation($r: ID!, $b: String!, $c: String!) { sendMessage(roomId: $r, body: $b, clientMsgId: $c) { seq clientMsgId } }";
pub const MESSAGES: &str =
    "subscription($r: ID!, $a: Int) { messages(roomId: $r, after: $a) { seq clientMsgId } }";
const HISTORY: &str = "query($r: ID!, $a: Int) { messages(roomId: $r, after: $a, first: 100) { hasMore messages { seq clientMsgId } } }";

/// A sender that cannot get one message acknowledged for this long fails the test.
pub const GIVE_UP: Duration = Duration::from_secs(60);
/// A subscriber reconnects when its connection is silent this long (the server pings
/// every 15 s, so a live connection is never this quiet).
pub const SILENCE: Duration = Duration::from_secs(20);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(100);

/// A signed-in user.
#[derive(Clone, Debug)]
pub struct User {
    pub token: String,
    pub id: String,
}

/// One acknowledged message.
#[derive(Clone, Debug)]
pub struct Ack {
    pub room: usize,
    pub client_msg_id: String,
    pub seq: i64,
    pub at: Instant,
}

/// One message a subscriber received.
#[derive(Clone, Debug)]
pub struct Got {
    pub seq: i64,
    pub client_msg_id: String,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct SubscriberLog {
    pub slow: bool,
    /// The `after` of its first subscription, per room.
    pub cursor0: Vec<i64>,
    /// Everything it received, per room, in order of arrival.
    pub got: Vec<Vec<Got>>,
    pub reconnects: u32,
}

/// What the clients saw.
#[derive(Debug)]
pub struct Journal {
    pub acks: Mutex<Vec<Ack>>,
    /// Failures seen by senders and subscribers, by kind (error code, HTTP status,
    /// "connect", "timeout", "closed", …).
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub subscribers: Vec<Mutex<SubscriberLog>>,
}

impl Journal {
    fn error(&self, kind: impl Into<String>) {
        *self
            .errors
            .lock()
            .expect("lock")
            .entry(kind.into())
            .or_default() += 1;
    }

    pub fn acked(&self) -> usize {
        self.acks.lock().expect("lock").len()
    }

    /// The highest acknowledged seq per room.
    pub fn heads(&self, rooms: usize) -> Vec<i64> {
        let mut heads = vec![0; rooms];
        for ack in self.acks.lock().expect("lock").iter() {
            heads[ack.room] = heads[ack.room].max(ack.seq);
        }
        heads
    }

    /// Acks at or after `t`.
    pub fn acks_since(&self, t: Instant) -> usize {
        self.acks
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a.at >= t)
            .count()
    }

    /// Whether every (non-slow) subscriber has received at least `heads[room]` in each room.
    pub fn delivered(&self, heads: &[i64]) -> bool {
        self.subscribers.iter().all(|s| {
            let log = s.lock().expect("lock");
            log.slow
                || heads.iter().enumerate().all(|(room, &head)| {
                    log.got[room].last().map_or(log.cursor0[room], |g| g.seq) >= head
                })
        })
    }

    /// End-to-end recovery after `t`: until the first message acknowledged at or after `t`
    /// has reached every (non-slow) subscriber. `None` if it has not (yet).
    pub fn recovery_after(&self, t: Instant) -> Option<Duration> {
        let first = self
            .acks
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a.at >= t)
            .min_by_key(|a| a.at)
            .cloned()?;
        let mut last = first.at;
        for sub in &self.subscribers {
            let log = sub.lock().expect("lock");
            if log.slow {
                continue;
            }
            let got = log.got[first.room].iter().find(|g| g.seq == first.seq)?;
            last = last.max(got.at);
        }
        Some(last - t)
    }

    /// Until the first acknowledgement at or after `t`.
    pub fn write_recovery_after(&self, t: Instant) -> Option<Duration> {
        self.acks
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a.at >= t)
            .map(|a| a.at - t)
            .min()
    }

    /// The longest time between two acknowledgements (any sender).
    pub fn max_ack_gap(&self) -> Duration {
        let mut times: Vec<Instant> = self
            .acks
            .lock()
            .expect("lock")
            .iter()
            .map(|a| a.at)
            .collect();
        times.sort();
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    /// The longest time a (non-slow) subscriber went without a message while messages were
    /// being acknowledged (between its first and last receipt).
    pub fn max_delivery_gap(&self) -> Duration {
        self.subscribers
            .iter()
            .filter_map(|s| {
                let log = s.lock().expect("lock");
                if log.slow {
                    return None;
                }
                let mut times: Vec<Instant> = log.got.iter().flatten().map(|g| g.at).collect();
                times.sort();
                times.windows(2).map(|w| w[1] - w[0]).max()
            })
            .max()
            .unwrap_or_default()
    }

    pub fn reconnects(&self) -> u32 {
        self.subscribers
            .iter()
            .map(|s| s.lock().expect("lock").reconnects)
            .sum()
    }

    pub fn delivered_count(&self) -> usize {
        self.subscribers
            .iter()
            .map(|s| {
                s.lock()
                    .expect("lock")
                    .got
                    .iter()
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum()
    }

    pub fn error_summary(&self) -> String {
        let errors = self.errors.lock().expect("lock");
        if errors.is_empty() {
            return "none".to_owned();
        }
        errors
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The shape of a load.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// For each sender, the index of the instance it starts on.
    pub senders: Vec<usize>,
    /// For each subscriber, the instance it starts on.
    pub subscribers: Vec<usize>,
    /// Slow subscribers (never read until the load stops), by instance.
    pub slow_subscribers: Vec<usize>,
    /// Pause between one sender's messages.
    pub pace: Duration,
    /// Characters per message body.
    pub body_len: usize,
    /// Prefix of every clientMsgId (unique per load).
    pub tag: String,
}

/// A running load.
pub struct Load {
    pub journal: Arc<Journal>,
    pub rooms: Vec<String>,
    pub users: Vec<User>,
    endpoints: Arc<Vec<SocketAddr>>,
    stop_sending: CancellationToken,
    targets: watch::Sender<Option<Vec<i64>>>,
    senders: Vec<JoinHandle<()>>,
    subscribers: Vec<JoinHandle<()>>,
}

/// A GraphQL request that must succeed (set-up, before any fault).
pub async fn graphql(addr: SocketAddr, token: Option<&str>, query: &str, vars: Value) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/graphql"))
        .json(&json!({ "query": query, "variables": vars }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let body: Value = request
        .send()
        .await
        .expect("POST /graphql")
        .json()
        .await
        .expect("a JSON body");
    assert!(body.get("errors").is_none(), "{query}: {body}");
    body["data"].clone()
}

pub async fn register(addr: SocketAddr, username: &str) -> User {
    let data = graphql(
        addr,
        None,
        "mutation($u: String!, $p: String!) { register(username: $u, password: $p) { token user { id } } }",
        json!({ "u": username, "p": "password-123" }),
    )
    .await;
    User {
        token: data["register"]["token"]
            .as_str()
            .expect("token")
            .to_owned(),
        id: data["register"]["user"]["id"]
            .as_str()
            .expect("id")
            .to_owned(),
    }
}

/// Two users (the host and a member) and `rooms` rooms both are members of.
pub async fn set_up(addr: SocketAddr, rooms: usize) -> (Vec<User>, Vec<String>) {
    let host = register(addr, "alice").await;
    let member = register(addr, "bob").await;
    let mut ids = Vec::new();
    for r in 0..rooms {
        let data = graphql(
            addr,
            Some(&host.token),
            "mutation($n: String!) { createRoom(name: $n) { id } }",
            json!({ "n": format!("room-{r}") }),
        )
        .await;
        let room = data["createRoom"]["id"]
            .as_str()
            .expect("room id")
            .to_owned();
        graphql(
            addr,
            Some(&member.token),
            "mutation($r: ID!) { joinRoom(roomId: $r) { id } }",
            json!({ "r": room }),
        )
        .await;
        ids.push(room);
    }
    (vec![host, member], ids)
}

impl Load {
    /// Starts the clients; returns once every subscriber has subscribed once.
    pub async fn start(
        endpoints: Vec<SocketAddr>,
        users: Vec<User>,
        rooms: Vec<String>,
        spec: LoadSpec,
    ) -> Self {
        let endpoints = Arc::new(endpoints);
        let all_subscribers: Vec<(usize, bool)> = spec
            .subscribers
            .iter()
            .map(|&home| (home, false))
            .chain(spec.slow_subscribers.iter().map(|&home| (home, true)))
            .collect();
        let journal = Arc::new(Journal {
            acks: Mutex::default(),
            errors: Mutex::default(),
            subscribers: all_subscribers
                .iter()
                .map(|&(_, slow)| {
                    Mutex::new(SubscriberLog {
                        slow,
                        cursor0: vec![0; rooms.len()],
                        got: vec![Vec::new(); rooms.len()],
                        reconnects: 0,
                    })
                })
                .collect(),
        });
        let (targets, _) = watch::channel(None);
        let stop_sending = CancellationToken::new();
        let (subscribed_tx, mut subscribed) = tokio::sync::mpsc::channel(all_subscribers.len());
        let subscribers = all_subscribers
            .iter()
            .enumerate()
            .map(|(ix, &(home, slow))| {
                tokio::spawn(subscriber(SubscriberTask {
                    ix,
                    home,
                    slow,
                    endpoints: endpoints.clone(),
                    token: users[ix % users.len()].token.clone(),
                    rooms: rooms.clone(),
                    journal: journal.clone(),
                    targets: targets.subscribe(),
                    subscribed: subscribed_tx.clone(),
                }))
            })
            .collect();
        for _ in 0..all_subscribers.len() {
            timeout(Duration::from_secs(30), subscribed.recv())
                .await
                .expect("every subscriber subscribes within 30 s");
        }
        // No pause needed before sending: a subscription replays what it missed from the
        // history, so whatever arrives before it is live is still delivered once.
        let senders = spec
            .senders
            .iter()
            .enumerate()
            .map(|(n, &home)| {
                tokio::spawn(sender(SenderTask {
                    n,
                    home,
                    endpoints: endpoints.clone(),
                    token: users[n % users.len()].token.clone(),
                    rooms: rooms.clone(),
                    journal: journal.clone(),
                    stop: stop_sending.clone(),
                    pace: spec.pace,
                    body: "x".repeat(spec.body_len.max(1)),
                    tag: spec.tag.clone(),
                }))
            })
            .collect();
        Self {
            journal,
            rooms,
            users,
            endpoints,
            stop_sending,
            targets,
            senders,
            subscribers,
        }
    }

    /// Waits until `n` more messages are acknowledged than now.
    pub async fn wait_acks(&self, n: usize, limit: Duration) {
        let goal = self.journal.acked() + n;
        let deadline = Instant::now() + limit;
        while self.journal.acked() < goal {
            assert!(
                Instant::now() < deadline,
                "only {} of {goal} messages acknowledged within {limit:?}; client errors: {}",
                self.journal.acked(),
                self.journal.error_summary()
            );
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until a message acknowledged at or after `t` has reached every subscriber;
    /// returns that recovery time.
    pub async fn wait_recovery(&self, t: Instant, limit: Duration) -> Duration {
        let deadline = t + limit;
        loop {
            if let Some(recovery) = self.journal.recovery_after(t) {
                return recovery;
            }
            assert!(
                Instant::now() < deadline,
                "no message sent after the fault reached every subscriber within {limit:?} \
                 ({} acks since; client errors: {})",
                self.journal.acks_since(t),
                self.journal.error_summary()
            );
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the senders (each finishes the message it is on), then waits until every
    /// subscriber, slow ones included, has received everything acknowledged.
    pub async fn finish(self, limit: Duration) -> Finished {
        self.stop_sending.cancel();
        for sender in self.senders {
            sender.await.expect("a sender failed");
        }
        let heads = self.journal.heads(self.rooms.len());
        self.targets.send_replace(Some(heads.clone()));
        let all = async {
            for subscriber in self.subscribers {
                subscriber.await.expect("a subscriber failed");
            }
        };
        if timeout(limit, all).await.is_err() {
            let behind: Vec<String> = self
                .journal
                .subscribers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let log = s.lock().expect("lock");
                    let at: Vec<i64> = log
                        .got
                        .iter()
                        .zip(&log.cursor0)
                        .map(|(g, c)| g.last().map_or(*c, |g| g.seq))
                        .collect();
                    format!(
                        "subscriber {i}{}: at {at:?}",
                        if log.slow { " (slow)" } else { "" }
                    )
                })
                .collect();
            panic!(
                "subscribers did not receive everything (heads {heads:?}) within {limit:?}: {}; \
                 client errors: {}",
                behind.join("; "),
                self.journal.error_summary()
            );
        }
        Finished {
            journal: self.journal,
            rooms: self.rooms,
            users: self.users,
            endpoints: self.endpoints,
        }
    }
}

/// A load that has stopped; ready to be checked.
pub struct Finished {
    pub journal: Arc<Journal>,
    pub rooms: Vec<String>,
    pub users: Vec<User>,
    endpoints: Arc<Vec<SocketAddr>>,
}

/// What [`Finished::verify`] found.
#[derive(Debug)]
pub struct Verified {
    pub stored: usize,
    pub delivered: usize,
}

impl Finished {
    /// The stored history of `room`, through the API (any instance that answers).
    async fn history(&self, room: &str) -> Vec<(i64, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        'again: loop {
            assert!(Instant::now() < deadline, "no instance serves the history");
            for &addr in self.endpoints.iter() {
                let mut out = Vec::new();
                let mut after = 0;
                loop {
                    let request = reqwest::Client::new()
                        .post(format!("http://{addr}/graphql"))
                        .timeout(HTTP_TIMEOUT)
                        .bearer_auth(&self.users[0].token)
                        .json(&json!({ "query": HISTORY, "variables": { "r": room, "a": after } }))
                        .send()
                        .await;
                    let Ok(response) = request else { break };
                    let Ok(body) = response.json::<Value>().await else {
                        break;
                    };
                    if body.get("errors").is_some() {
                        break;
                    }
                    let page = &body["data"]["messages"];
                    for m in page["messages"].as_array().expect("messages") {
                        let seq = m["seq"].as_i64().expect("seq");
                        out.push((seq, m["clientMsgId"].as_str().expect("id").to_owned()));
                        after = seq;
                    }
                    if page["hasMore"] != json!(true) {
                        return out;
                    }
                }
            }
            sleep(Duration::from_millis(200)).await;
            continue 'again;
        }
    }

    /// Asserts acked = stored, no duplicate, contiguous seq per room, and exactly-once
    /// in-order delivery after each subscriber's cursor.
    pub async fn verify(&self) -> Verified {
        let acks = self.journal.acks.lock().expect("lock").clone();
        let mut acked: HashMap<String, (usize, i64)> = HashMap::new();
        for ack in &acks {
            let previous = acked.insert(ack.client_msg_id.clone(), (ack.room, ack.seq));
            assert!(
                previous.is_none(),
                "{} acknowledged twice",
                ack.client_msg_id
            );
        }
        let mut stored_ids = HashSet::new();
        let mut stored_total = 0;
        let mut stored_rooms = Vec::new();
        for (r, room) in self.rooms.iter().enumerate() {
            let stored = self.history(room).await;
            let seqs: Vec<i64> = stored.iter().map(|(s, _)| *s).collect();
            assert_eq!(
                seqs,
                (1..=stored.len() as i64).collect::<Vec<_>>(),
                "room {r}: stored seq is not 1..n"
            );
            for (seq, id) in &stored {
                assert!(stored_ids.insert(id.clone()), "{id} stored twice");
                match acked.get(id) {
                    Some(&(ack_room, ack_seq)) => assert_eq!(
                        (ack_room, ack_seq),
                        (r, *seq),
                        "{id} was acknowledged as room {ack_room} seq {ack_seq}, stored as room {r} seq {seq}"
                    ),
                    None => panic!("{id} (room {r}, seq {seq}) is stored but was never acknowledged"),
                }
            }
            stored_total += stored.len();
            stored_rooms.push(stored);
        }
        for id in acked.keys() {
            assert!(
                stored_ids.contains(id),
                "{id} was acknowledged but is not stored"
            );
        }
        assert_eq!(stored_total, acks.len(), "acked = stored");

        let mut delivered = 0;
        for (i, sub) in self.journal.subscribers.iter().enumerate() {
            let log = sub.lock().expect("lock");
            for (r, stored) in stored_rooms.iter().enumerate() {
                let from = log.cursor0[r];
                let expected: Vec<(i64, &str)> = stored
                    .iter()
                    .filter(|(s, _)| *s > from)
                    .map(|(s, id)| (*s, id.as_str()))
                    .collect();
                let got: Vec<(i64, &str)> = log.got[r]
                    .iter()
                    .map(|g| (g.seq, g.client_msg_id.as_str()))
                    .collect();
                if got != expected {
                    let dup = got.len() > expected.len();
                    panic!(
                        "subscriber {i}{} in room {r}: got {} messages, expected {} (seq {}..={}); \
                         {}; first difference at index {:?}",
                        if log.slow { " (slow)" } else { "" },
                        got.len(),
                        expected.len(),
                        from + 1,
                        stored.len(),
                        if dup { "duplicates" } else { "missing or out of order" },
                        got.iter().zip(&expected).position(|(a, b)| a != b)
                    );
                }
                delivered += got.len();
            }
        }
        Verified {
            stored: stored_total,
            delivered,
        }
    }
}

struct SenderTask {
    n: usize,
    home: usize,
    endpoints: Arc<Vec<SocketAddr>>,
    token: String,
    rooms: Vec<String>,
    journal: Arc<Journal>,
    stop: CancellationToken,
    pace: Duration,
    body: String,
    tag: String,
}

enum SendError {
    /// The connection failed: try another instance.
    Transport(String),
    /// The instance answered with an error: retry (the same instance is fine).
    Answer(String),
}

async fn send_once(
    http: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    room: &str,
    body: &str,
    client_msg_id: &str,
) -> Result<(i64, String), SendError> {
    let response = http
        .post(format!("http://{addr}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": SEND, "variables": { "r": room, "b": body, "c": client_msg_id } }))
        .send()
        .await
        .map_err(|e| {
            SendError::Transport(if e.is_timeout() {
                "send: timeout".to_owned()
            } else if e.is_connect() {
                "send: connect refused".to_owned()
            } else {
                "send: connection lost".to_owned()
            })
        })?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.map_err(|e| {
        SendError::Transport(if e.is_timeout() {
            "send: timeout".to_owned()
        } else {
            format!("send: HTTP {status} without a JSON body")
        })
    })?;
    if let Some(error) = body["errors"].get(0) {
        let code = error["extensions"]["code"].as_str().unwrap_or("no code");
        if matches!(
            code,
            "BAD_USER_INPUT" | "UNAUTHENTICATED" | "FORBIDDEN" | "NOT_FOUND"
        ) {
            panic!("sendMessage {client_msg_id} refused for good: {body}");
        }
        return Err(SendError::Answer(format!("send: HTTP {status} {code}")));
    }
    let message = &body["data"]["sendMessage"];
    Ok((
        message["seq"].as_i64().expect("seq"),
        message["clientMsgId"]
            .as_str()
            .expect("clientMsgId")
            .to_owned(),
    ))
}

async fn sender(task: SenderTask) {
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .expect("HTTP client");
    let mut at = task.home;
    for i in 0.. {
        if task.stop.is_cancelled() {
            return;
        }
        let room = (task.n + i) % task.rooms.len();
        let client_msg_id = format!("{}-s{}-{i}", task.tag, task.n);
        let started = Instant::now();
        loop {
            let addr = task.endpoints[at];
            match send_once(
                &http,
                addr,
                &task.token,
                &task.rooms[room],
                &task.body,
                &client_msg_id,
            )
            .await
            {
                Ok((seq, echoed)) => {
                    assert_eq!(echoed, client_msg_id, "the ack is for the message sent");
                    task.journal.acks.lock().expect("lock").push(Ack {
                        room,
                        client_msg_id: client_msg_id.clone(),
                        seq,
                        at: Instant::now(),
                    });
                    break;
                }
                // Any failure: the next try goes to the next instance (one that cannot
                // reach its database answers INTERNAL while another may be fine).
                Err(SendError::Transport(kind) | SendError::Answer(kind)) => {
                    task.journal.error(kind);
                    at = (at + 1) % task.endpoints.len();
                }
            }
            assert!(
                started.elapsed() < GIVE_UP,
                "{client_msg_id} not acknowledged within {GIVE_UP:?}; client errors: {}",
                task.journal.error_summary()
            );
            sleep(RETRY).await;
        }
        sleep(task.pace).await;
    }
}

struct SubscriberTask {
    ix: usize,
    home: usize,
    slow: bool,
    endpoints: Arc<Vec<SocketAddr>>,
    token: String,
    rooms: Vec<String>,
    journal: Arc<Journal>,
    targets: watch::Receiver<Option<Vec<i64>>>,
    subscribed: tokio::sync::mpsc::Sender<()>,
}

type Socket = WebSocketStream<TcpStream>;

async fn open(addr: SocketAddr, small_buffer: bool) -> Result<Socket, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if small_buffer {
        socket
            .set_recv_buffer_size(4096)
            .map_err(|e| e.to_string())?;
    }
    let stream = timeout(Duration::from_secs(2), socket.connect(addr))
        .await
        .map_err(|_| "ws: connect timeout".to_owned())?
        .map_err(|_| "ws: connect refused".to_owned())?;
    let mut request = format!("ws://{addr}/graphql/ws")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (socket, _) = timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .map_err(|_| "ws: upgrade timeout".to_owned())?
    .map_err(|e| format!("ws: upgrade failed ({e})"))?;
    Ok(socket)
}

async fn text(socket: &mut Socket, value: Value) -> Result<(), String> {
    socket
        .send(Frame::Text(value.to_string().into()))
        .await
        .map_err(|_| "ws: send failed".to_owned())
}

/// Connects, inits and subscribes every room after `cursor`.
async fn session(
    task: &SubscriberTask,
    addr: SocketAddr,
    cursor: &[i64],
) -> Result<Socket, String> {
    let mut socket = open(addr, task.slow).await?;
    text(
        &mut socket,
        json!({ "type": "connection_init", "payload": { "token": task.token } }),
    )
    .await?;
    let ack = timeout(Duration::from_secs(5), async {
        while let Some(frame) = socket.next().await {
            if let Ok(Frame::Text(t)) = frame {
                return Some(t.to_string());
            }
        }
        None
    })
    .await
    .map_err(|_| "ws: no connection_ack".to_owned())?
    .ok_or_else(|| "ws: closed before connection_ack".to_owned())?;
    let ack: Value = serde_json::from_str(&ack).map_err(|_| "ws: bad ack".to_owned())?;
    if ack["type"] != "connection_ack" {
        return Err(format!("ws: {} instead of connection_ack", ack["type"]));
    }
    for (r, room) in task.rooms.iter().enumerate() {
        text(
            &mut socket,
            json!({ "id": r.to_string(), "type": "subscribe",
                    "payload": { "query": MESSAGES, "variables": { "r": room, "a": cursor[r] } } }),
        )
        .await?;
    }
    Ok(socket)
}

fn done(targets: &watch::Receiver<Option<Vec<i64>>>, cursor: &[i64]) -> bool {
    targets
        .borrow()
        .as_ref()
        .is_some_and(|t| t.iter().zip(cursor).all(|(t, c)| c >= t))
}

async fn subscriber(mut task: SubscriberTask) {
    let mut cursor = vec![0i64; task.rooms.len()];
    let mut at = task.home;
    let mut first = true;
    loop {
        if done(&task.targets, &cursor) {
            return;
        }
        let addr = task.endpoints[at];
        let mut socket = match session(&task, addr, &cursor).await {
            Ok(socket) => socket,
            Err(kind) => {
                task.journal.error(kind);
                at = (at + 1) % task.endpoints.len();
                sleep(RETRY).await;
                continue;
            }
        };
        if first {
            first = false;
            let _ = task.subscribed.send(()).await;
            if task.slow {
                // Reads nothing until the load is over.
                while task.targets.borrow().is_none() {
                    if task.targets.changed().await.is_err() {
                        return;
                    }
                }
            }
        } else {
            task.journal.subscribers[task.ix]
                .lock()
                .expect("lock")
                .reconnects += 1;
        }
        loop {
            if done(&task.targets, &cursor) {
                let _ = socket.close(None).await;
                return;
            }
            let frame = tokio::select! {
                frame = timeout(SILENCE, socket.next()) => frame,
                changed = task.targets.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let frame = match frame {
                Err(_) => {
                    task.journal.error("ws: silent connection");
                    break;
                }
                Ok(None) | Ok(Some(Err(_))) => {
                    task.journal.error("ws: connection lost");
                    break;
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let message: Value = match frame {
                Frame::Text(t) => serde_json::from_str(&t).expect("JSON message"),
                Frame::Close(close) => {
                    task.journal.error(format!(
                        "ws: closed {}",
                        close.map_or(1005, |c| u16::from(c.code))
                    ));
                    break;
                }
                _ => continue,
            };
            match message["type"].as_str() {
                Some("next") if message["payload"].get("errors").is_none() => {
                    let r: usize = message["id"]
                        .as_str()
                        .and_then(|id| id.parse().ok())
                        .expect("a subscription id");
                    let m = &message["payload"]["data"]["messages"];
                    let seq = m["seq"].as_i64().expect("seq");
                    task.journal.subscribers[task.ix].lock().expect("lock").got[r].push(Got {
                        seq,
                        client_msg_id: m["clientMsgId"].as_str().expect("id").to_owned(),
                        at: Instant::now(),
                    });
                    cursor[r] = seq;
                }
                Some("ping") => {
                    let _ = text(&mut socket, json!({ "type": "pong" })).await;
                }
                Some("pong") => {}
                _ => {
                    // An error or the end of a subscription: resubscribe from the cursor.
                    let code = message["payload"]
                        .get("errors")
                        .unwrap_or(&message["payload"])
                        .get(0)
                        .and_then(|e| e["extensions"]["code"].as_str())
                        .unwrap_or("")
                        .to_owned();
                    task.journal
                        .error(format!("ws: subscription {} {code}", message["type"]));
                    break;
                }
            }
        }
        let _ = socket.close(None).await;
        sleep(RETRY).await;
    }
}
