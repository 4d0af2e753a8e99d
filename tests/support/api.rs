//! A real Parley server on a random port, and real HTTP and WebSocket clients for it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parley::app::{App, AppOptions};
use parley::relay::{Presence, PresenceConfig, Relay, RelayConfig};
use parley::store::{EventLog, PostgresLog};
use parley::ws::WsConfig;
use parley_projections::postgres::ProjectorConfig;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::TestDb;

/// Which store a test server runs on.
#[derive(Clone, Copy, Debug)]
pub enum Store {
    Postgres,
    Memory,
}

/// The parts of an instance that shares Redis (relay and presence under `prefix`) with
/// others; fails with a clear message when Redis is unreachable.
pub async fn redis_options(url: &str, prefix: &str, presence_ttl: Duration) -> AppOptions {
    super::redis::admin().await;
    AppOptions {
        projector: fast_projector(),
        relay: Relay::redis(url, RelayConfig::with_prefix(prefix))
            .await
            .expect("Redis relay"),
        presence: Presence::redis(
            url,
            PresenceConfig {
                prefix: prefix.to_owned(),
                ttl: presence_ttl,
                ..PresenceConfig::default()
            },
        )
        .await
        .expect("Redis presence"),
    }
}

pub fn fast_projector() -> ProjectorConfig {
    ProjectorConfig {
        poll_interval: Duration::from_millis(50),
        standby_retry: Duration::from_millis(100),
        ..ProjectorConfig::default()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub app: App,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    pub db: Option<TestDb>,
    http: reqwest::Client,
}

/// A signed-in user.
#[derive(Clone, Debug)]
pub struct Session {
    pub token: String,
    pub id: String,
    pub username: String,
}

impl TestServer {
    pub async fn start(store: Store) -> Self {
        Self::start_with(store, WsConfig::default()).await
    }

    pub async fn start_with(store: Store, ws: WsConfig) -> Self {
        let (log, db) = match store {
            Store::Postgres => {
                let db = TestDb::new().await;
                (
                    EventLog::postgres(PostgresLog::new(db.pool.clone())),
                    Some(db),
                )
            }
            Store::Memory => (EventLog::memory(), None),
        };
        Self::on_log(log, db, AppOptions::local(fast_projector()), ws).await
    }

    /// A server over a given log with given parts (several instances share one log).
    pub async fn on_log(
        log: EventLog,
        db: Option<TestDb>,
        options: AppOptions,
        ws: WsConfig,
    ) -> Self {
        // Tests not about rate limits must not trip over them (they all come from 127.0.0.1).
        let app = App::start_with(
            log,
            "test-secret-that-is-long-enough-0123456789".into(),
            options,
        )
        .with_rate_limits(&parley::limits::RateLimitConfig::unlimited());
        // A loaded CI machine may be slow; the request timeout is not what these tests test.
        let limits = parley::config::HttpLimits {
            request_timeout: Duration::from_secs(300),
            ..parley::config::HttpLimits::default()
        };
        Self::on_app(app, db, ws, limits).await
    }

    /// A server for an app built by the caller, with the given connection limits.
    pub async fn on_app(
        app: App,
        db: Option<TestDb>,
        ws: WsConfig,
        limits: parley::config::HttpLimits,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding");
        let addr = listener.local_addr().expect("address");
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            parley::server::run_limited(
                listener,
                app.clone(),
                ws,
                limits,
                stop.clone().cancelled_owned(),
            )
            .map_unit(),
        );
        Self {
            addr,
            app,
            stop,
            task,
            db,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a GraphQL request; returns the status and the JSON body.
    pub async fn post(&self, token: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("POST /graphql");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    /// A request that must succeed: returns `data`.
    pub async fn ok(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let (status, body) = self.post(token, query, variables).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    /// A request that must fail with `code`: returns the first error.
    pub async fn fails(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
        code: &str,
    ) -> Value {
        let (_, body) = self.post(token, query, variables).await;
        let error = body["errors"][0].clone();
        assert_eq!(
            error["extensions"]["code"], code,
            "expected {code}, got {body}"
        );
        error
    }

    pub async fn register(&self, username: &str) -> Session {
        let data = self
            .ok(
                None,
                "mutation($u: String!, $p: String!) { register(username: $u, password: $p) { token user { id username } } }",
                json!({ "u": username, "p": "password-123" }),
            )
            .await;
        Session {
            token: data["register"]["token"]
                .as_str()
                .expect("token")
                .to_owned(),
            id: data["register"]["user"]["id"]
                .as_str()
                .expect("id")
                .to_owned(),
            username: username.to_owned(),
        }
    }

    pub async fn create_room(
        &self,
        host: &Session,
        name: &str,
        participants: &[&Session],
    ) -> String {
        let ids: Vec<&str> = participants.iter().map(|p| p.id.as_str()).collect();
        let data = self
            .ok(
                Some(&host.token),
                "mutation($n: String!, $p: [ID!]) { createRoom(name: $n, participants: $p) { id } }",
                json!({ "n": name, "p": ids }),
            )
            .await;
        data["createRoom"]["id"]
            .as_str()
            .expect("room id")
            .to_owned()
    }

    pub async fn join(&self, who: &Session, room: &str) {
        self.ok(
            Some(&who.token),
            "mutation($r: ID!) { joinRoom(roomId: $r) { id } }",
            json!({ "r": room }),
        )
        .await;
    }

    pub async fn send(&self, who: &Session, room: &str, body: &str, client_msg_id: &str) -> Value {
        self.ok(
            Some(&who.token),
            "mutation($r: ID!, $b: String!, $c: String!) { sendMessage(roomId: $r, body: $b, clientMsgId: $c) { id seq body clientMsgId sender { username } } }",
            json!({ "r": room, "b": body, "c": client_msg_id }),
        )
        .await["sendMessage"]
            .clone()
    }

    /// Waits until this instance's relay has a local subscriber on `channel` (a
    /// subscription the server has taken), polling its count; fails after 5 s.
    pub async fn wait_for_subscriber(&self, channel: &parley::relay::Channel) {
        self.wait_for_subscribers(channel, 1).await;
    }

    /// Waits until this instance's relay has at least `count` local subscribers on
    /// `channel`; fails after 5 s.
    pub async fn wait_for_subscribers(&self, channel: &parley::relay::Channel, count: usize) {
        for _ in 0..500 {
            if self.app.relay.local_subscribers(channel) >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {count} subscriptions on {channel:?} were taken within 5 s");
    }

    /// Waits until this instance serves at least `count` room subscriptions of `room` past
    /// their start: each has its starting point and has found its caller a member, so what
    /// is committed from now on reaches it (and a removal ends it rather than refusing it);
    /// fails after 5 s. A taken relay channel ([`Self::wait_for_subscribers`]) says less: a
    /// subscription takes it first, then reads where it starts.
    pub async fn wait_for_feeds(&self, room: &str, count: usize) {
        let room = parley_domain::RoomId::parse(room).expect("room id");
        for _ in 0..500 {
            if self.app.feeds.count(room) >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {count} subscriptions of room {room} started within 5 s");
    }

    pub async fn event_count(&self) -> i64 {
        self.app.log.count().await.expect("counting events")
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

trait MapUnit {
    fn map_unit(self) -> futures::future::BoxFuture<'static, ()>;
}

impl<F: std::future::Future<Output = std::io::Result<()>> + Send + 'static> MapUnit for F {
    fn map_unit(self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(error) = self.await {
                panic!("server failed: {error}");
            }
        })
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking graphql-transport-ws (or legacy graphql-ws).
pub struct WsClient {
    socket: Socket,
    pending: HashMap<String, VecDeque<Value>>,
    pub protocol: &'static str,
}

/// How a socket ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
}

pub async fn open_socket(addr: SocketAddr, protocol: &str, header_token: Option<&str>) -> Socket {
    let mut request = format!("ws://{addr}/graphql/ws")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
    if let Some(token) = header_token {
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket upgrade");
    socket
}

/// Waits for the server to close `socket`; returns the close code.
pub async fn closed(socket: &mut Socket) -> Closed {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), socket.next())
            .await
            .expect("the server closes within 15 s");
        match frame {
            Some(Ok(Message::Close(frame))) => {
                // Answer it, as a browser does (the reply is queued; this sends it).
                let _ = socket.close(None).await;
                return Closed {
                    code: frame.map_or(1005, |f| u16::from(f.code)),
                };
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Closed { code: 1006 },
        }
    }
}

impl WsClient {
    /// Connects and completes `connection_init` with `token`.
    pub async fn connect(addr: SocketAddr, token: &str) -> Self {
        Self::connect_with(addr, "graphql-transport-ws", json!({ "token": token })).await
    }

    pub async fn connect_with(addr: SocketAddr, protocol: &'static str, payload: Value) -> Self {
        let mut socket = open_socket(addr, protocol, None).await;
        socket
            .send(Message::Text(
                json!({ "type": "connection_init", "payload": payload })
                    .to_string()
                    .into(),
            ))
            .await
            .expect("sending connection_init");
        let mut client = Self {
            socket,
            pending: HashMap::new(),
            protocol,
        };
        let ack = client.read().await.expect("connection_ack");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        client
    }

    /// The next text message. One deadline for the whole wait: server pings do not extend it.
    async fn read(&mut self) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("a WebSocket message within 15 s")?;
            match frame.ok()? {
                Message::Text(text) => {
                    return Some(serde_json::from_str(&text).expect("JSON message"))
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        let kind = if self.protocol == "graphql-ws" {
            "start"
        } else {
            "subscribe"
        };
        self.socket
            .send(Message::Text(
                json!({ "id": id, "type": kind, "payload": { "query": query, "variables": variables } })
                    .to_string()
                    .into(),
            ))
            .await
            .expect("sending subscribe");
    }

    pub async fn unsubscribe(&mut self, id: &str) {
        let kind = if self.protocol == "graphql-ws" {
            "stop"
        } else {
            "complete"
        };
        self.socket
            .send(Message::Text(
                json!({ "id": id, "type": kind }).to_string().into(),
            ))
            .await
            .expect("sending complete");
    }

    /// The next message for subscription `id`: `next`/`data`, `error` or `complete`.
    pub async fn message(&mut self, id: &str) -> Value {
        if let Some(message) = self.pending.get_mut(id).and_then(VecDeque::pop_front) {
            return message;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no message for subscription {id} within 20 s (others pending: {:?})",
                self.pending.keys().collect::<Vec<_>>()
            );
            let message = self.read().await.expect("the socket stays open");
            match message["type"].as_str() {
                Some("ping") => {
                    let pong = json!({ "type": "pong" }).to_string();
                    self.socket
                        .send(Message::Text(pong.into()))
                        .await
                        .expect("pong");
                }
                Some("ka") => {}
                _ => {
                    let for_id = message["id"].as_str().unwrap_or_default().to_owned();
                    if for_id == id {
                        return message;
                    }
                    self.pending.entry(for_id).or_default().push_back(message);
                }
            }
        }
    }

    /// The next result's `data` for `id`; panics on an error or completion.
    pub async fn next(&mut self, id: &str) -> Value {
        let message = self.message(id).await;
        match message["type"].as_str() {
            Some("next" | "data") if message["payload"].get("errors").is_none() => {
                message["payload"]["data"].clone()
            }
            _ => panic!("expected data for {id}, got {message}"),
        }
    }

    /// The error code a subscription was refused with (an `error` message, or a `next` with
    /// errors followed by `complete`, as async-graphql sends for resolver errors).
    pub async fn refusal(&mut self, id: &str) -> String {
        let message = self.message(id).await;
        let error = match message["type"].as_str() {
            Some("error") => message["payload"][0].clone(),
            Some("next" | "data") => message["payload"]["errors"][0].clone(),
            _ => panic!("expected a refusal for {id}, got {message}"),
        };
        error["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no code in {message}"))
            .to_owned()
    }

    /// Asserts that nothing arrives for `id` within `wait`.
    pub async fn quiet(&mut self, id: &str, wait: Duration) {
        if let Some(message) = self.pending.get(id).and_then(|q| q.front()) {
            panic!("unexpected message for {id}: {message}");
        }
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, self.socket.next()).await
        {
            if let Message::Text(text) = frame {
                let message: Value = serde_json::from_str(&text).expect("JSON");
                if message["id"] == id {
                    panic!("unexpected message for {id}: {message}");
                }
                let for_id = message["id"].as_str().unwrap_or_default().to_owned();
                self.pending.entry(for_id).or_default().push_back(message);
            }
        }
    }

    pub async fn closed(&mut self) -> Closed {
        closed(&mut self.socket).await
    }

    /// Sends one protocol message as it is.
    pub async fn send_json(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("sending a message");
    }

    /// The socket itself, for frames the protocol helpers do not send.
    pub fn socket(&mut self) -> &mut Socket {
        &mut self.socket
    }

    pub fn close_code(code: CloseCode) -> u16 {
        u16::from(code)
    }
}

/// Which of two instances reaches Redis through the test's proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxied {
    A,
    B,
}

/// Instances A and B over one fresh database and one Redis prefix, one of them reaching
/// Redis through a proxy the test can cut (A starts first and runs the projector).
/// `relay_buffer`: the relays' buffer per channel (`None`: the default).
pub async fn a_and_b_behind_a_proxy(
    proxied: Proxied,
    relay_buffer: Option<usize>,
) -> (TestServer, TestServer, super::redis::FaultyProxy) {
    use super::redis::{redis_url, unique_prefix, upstream_of, url_via, FaultyProxy};
    parley::telemetry::init();
    let db = TestDb::new().await;
    let log = EventLog::postgres(PostgresLog::new(db.pool.clone()));
    let prefix = unique_prefix();
    let url = redis_url();
    let proxy = FaultyProxy::start(upstream_of(&url)).await;
    let url_for = |instance: Proxied| {
        if instance == proxied {
            url_via(&url, proxy.addr)
        } else {
            url.clone()
        }
    };
    let options = |url: String| {
        let prefix = prefix.clone();
        async move {
            let mut options = redis_options(&url, &prefix, Duration::from_secs(2)).await;
            if let Some(buffer) = relay_buffer {
                let config = RelayConfig {
                    buffer,
                    ..RelayConfig::with_prefix(&prefix)
                };
                options.relay = Relay::redis(&url, config).await.expect("Redis relay");
            }
            options
        }
    };
    let projecting = db.pool.clone();
    let a = TestServer::on_log(
        log.clone(),
        Some(db),
        options(url_for(Proxied::A)).await,
        WsConfig::default(),
    )
    .await;
    // A projects: B starts once A's projector has the lock.
    super::eventually("A's projector is active", || async {
        super::projector_active(&projecting).await
    })
    .await;
    let b = TestServer::on_log(
        log,
        None,
        options(url_for(Proxied::B)).await,
        WsConfig::default(),
    )
    .await;
    (a, b, proxy)
}
