//! The pump between a socket and async-graphql's protocol handler: the token's deadline and
//! its refresh, the init timeout, server pings and the idle timeout, the close handshake,
//! frames coalesced into one write, and presence heartbeats.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_graphql::http::{WebSocketProtocols, WsMessage};
use async_graphql::Data;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use parley_domain::UserId;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::app::App;
use crate::graphql::{Actor, ClientIp, RequestId, SubscriptionBudget};
use crate::http::session::{token_session, user_loader, GraphqlState};

use super::init_token;

/// Close codes of the graphql-transport-ws protocol.
const UNAUTHORIZED: u16 = 4401;
const FORBIDDEN: u16 = 4403;
const INIT_TIMEOUT: u16 = 4408;
const SUBSCRIBER_EXISTS: u16 = 4409;
/// RFC 6455: a message larger than the endpoint accepts.
const MESSAGE_TOO_BIG: u16 = 1009;

/// The `type` and `id` of a graphql-transport-ws message (the rest is not read here).
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
}

/// What graphql-transport-ws asks of the server that async-graphql does not do: a
/// `subscribe` before `connection_init` closes 4401, a second `subscribe` with an id in use
/// closes 4409. Tracks the ids in use.
#[derive(Default)]
struct ProtocolRules {
    init_received: bool,
    active: std::collections::HashSet<String>,
}

impl ProtocolRules {
    /// A client frame: `Err` with the close frame it earns.
    fn client(&mut self, text: &[u8]) -> Result<(), Message> {
        let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(text) else {
            return Ok(()); // async-graphql answers malformed messages itself
        };
        match (envelope.kind.as_ref(), envelope.id) {
            ("connection_init", _) => self.init_received = true,
            ("subscribe", _) if !self.init_received => {
                return Err(close(UNAUTHORIZED, "Unauthorized"));
            }
            ("subscribe", Some(id)) if !self.active.insert(id.clone().into_owned()) => {
                return Err(close(
                    SUBSCRIBER_EXISTS,
                    &format!("Subscriber for {id} already exists"),
                ));
            }
            ("complete", Some(id)) => {
                self.active.remove(id.as_ref());
            }
            _ => {}
        }
        Ok(())
    }

    /// A server frame: a finished operation frees its id.
    fn server(&mut self, text: &str) {
        if !(text.starts_with("{\"type\":\"complete\"") || text.starts_with("{\"type\":\"error\""))
        {
            return;
        }
        if let Ok(Envelope { id: Some(id), .. }) = serde_json::from_str::<Envelope<'_>>(text) {
            self.active.remove(id.as_ref());
        }
    }
}

/// At most this many frames are coalesced into one write (then the pump looks at the
/// client's side again).
const MAX_FRAMES_PER_WRITE: usize = 64;

/// How long a closing socket waits for the client's answering close frame.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

/// Sends `frame` (a close) and waits briefly for the client's close frame, so both sides
/// see a clean close; whatever else the client sends meanwhile is dropped.
async fn close_with(
    sink: &mut SplitSink<WebSocket, Message>,
    source: &mut SplitStream<WebSocket>,
    frame: Message,
) {
    if sink.send(frame).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
        while let Some(Ok(message)) = source.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// When a token expires, as a tokio deadline.
fn deadline(expires: SystemTime) -> tokio::time::Instant {
    let left = expires
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}

/// The fresh token a graphql-transport-ws `ping` carries (`{"type":"ping","payload":
/// {"token":…}}`, same fields as `connection_init`): the client re-authenticates on an open
/// socket before its token expires.
fn refreshed_token(frame: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Ping {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        payload: serde_json::Value,
    }
    let ping = serde_json::from_slice::<Ping>(frame).ok()?;
    if ping.kind != "ping" {
        return None;
    }
    init_token(&ping.payload)
}

/// Whether a read failed because the client's message was over the size cap.
fn too_big(error: axum::Error) -> bool {
    error
        .into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

pub(super) async fn pump(
    socket: WebSocket,
    protocol: WebSocketProtocols,
    state: GraphqlState,
    header_token: Option<Result<String, ()>>,
    ip: Option<ClientIp>,
    connection_id: String,
) {
    let (mut sink, mut source) = socket.split();
    let mut rules = (protocol == WebSocketProtocols::GraphQLWS).then(ProtocolRules::default);
    let (to_graphql, from_client) = mpsc::channel::<Bytes>(32);
    let refused = Arc::new(AtomicBool::new(false));
    let (signed_in_tx, mut signed_in) = mpsc::channel::<(UserId, SystemTime)>(1);

    let init = {
        let app = state.app.clone();
        let refused = refused.clone();
        let ws = state.ws.clone();
        let connection_id = connection_id.clone();
        move |payload: serde_json::Value| async move {
            let token = init_token(&payload).or_else(|| header_token.and_then(Result::ok));
            let session = match token.as_deref() {
                Some(token) => token_session(&app, token).await.ok(),
                None => None,
            };
            let Some((actor, expires)) = session else {
                refused.store(true, Ordering::SeqCst);
                return Err(async_graphql::Error::new(
                    "Forbidden: missing or invalid token",
                ));
            };
            let _ = signed_in_tx.send((actor, expires)).await;
            let mut data = Data::default();
            data.insert(Actor(actor));
            data.insert(RequestId(connection_id));
            data.insert(user_loader(&app));
            data.insert(SubscriptionBudget::new(ws.max_subscriptions));
            if let Some(ip) = ip {
                data.insert(ip);
            }
            Ok(data)
        }
    };
    let ws_protocol = protocol;
    let mut graphql = async_graphql::http::WebSocket::new(
        state.schema.clone(),
        ReceiverStream::new(from_client),
        ws_protocol,
    )
    .on_connection_init(init);

    let mut ping = tokio::time::interval(state.ws.ping_interval);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let init_deadline = tokio::time::sleep(state.ws.init_timeout);
    tokio::pin!(init_deadline);
    let mut user: Option<UserId> = None;
    let mut heartbeat = tokio::time::interval(state.app.presence.ttl() / 3);
    // The token's expiry, once signed in (a `ping` with a fresh token moves it).
    let expiry = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(expiry);
    let closing = state.app.sockets.closing();
    tokio::pin!(closing);

    loop {
        tokio::select! {
            frame = source.next() => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => {
                        if too_big(error) {
                            let refusal = close(MESSAGE_TOO_BIG, "message too big (at most 1 MiB)");
                            close_with(&mut sink, &mut source, refusal).await;
                        }
                        break;
                    }
                    None => break,
                };
                last_heard = tokio::time::Instant::now();
                let payload = match frame {
                    Message::Text(text) => Some(Bytes::from(text.as_str().to_owned())),
                    Message::Binary(bytes) => Some(bytes),
                    Message::Close(_) => {
                        // tungstenite queued the answering close frame; send it.
                        let _ = sink.flush().await;
                        break;
                    }
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(payload) = payload {
                    if let Some(Err(refusal)) = rules.as_mut().map(|r| r.client(&payload)) {
                        close_with(&mut sink, &mut source, refusal).await;
                        break;
                    }
                    if let (Some(signed_in), Some(token)) = (user, refreshed_token(&payload)) {
                        match token_session(&state.app, &token).await {
                            Ok((same, expires)) if same == signed_in => {
                                expiry.as_mut().reset(deadline(expires));
                            }
                            _ => {
                                let refusal = close(FORBIDDEN, "Forbidden: invalid token");
                                close_with(&mut sink, &mut source, refusal).await;
                                break;
                            }
                        }
                    }
                    if to_graphql.send(payload).await.is_err() { break; }
                }
            }
            out = graphql.next() => {
                let mut next = out;
                let mut written = 0;
                // Every frame that is ready now goes out in one write (one syscall, not one
                // per frame: a subscriber of a busy room gets many messages at once).
                let ended = loop {
                    let Some(out) = next else { break true };
                    if let (Some(rules), WsMessage::Text(text)) = (rules.as_mut(), &out) {
                        rules.server(text);
                    }
                    let message = match out {
                        WsMessage::Text(text) => Message::Text(text.into()),
                        WsMessage::Close(code, reason) => {
                            let code = if refused.load(Ordering::SeqCst) { FORBIDDEN } else { code };
                            Message::Close(Some(CloseFrame { code, reason: reason.into() }))
                        }
                    };
                    if matches!(message, Message::Close(_)) {
                        close_with(&mut sink, &mut source, message).await;
                        break true;
                    }
                    if sink.feed(message).await.is_err() { break true; }
                    written += 1;
                    if refused.load(Ordering::SeqCst) {
                        // Legacy protocol: the error went out as a message; now close.
                        close_with(&mut sink, &mut source, close(FORBIDDEN, "Forbidden")).await;
                        break true;
                    }
                    if written == MAX_FRAMES_PER_WRITE {
                        break false;
                    }
                    match graphql.next().now_or_never() {
                        Some(more) => next = more,
                        None => break false,
                    }
                };
                if ended || sink.flush().await.is_err() { break; }
            }
            Some((actor, expires)) = signed_in.recv() => {
                user = Some(actor);
                expiry.as_mut().reset(deadline(expires));
                let was_online = state.app.presence.is_online(actor).await.unwrap_or(true);
                touch_presence(&state.app, actor, &connection_id).await;
                if !was_online {
                    crate::live::publish_presence(&state.app, actor, true).await;
                }
            }
            _ = heartbeat.tick(), if user.is_some() => {
                if let Some(actor) = user {
                    touch_presence(&state.app, actor, &connection_id).await;
                }
            }
            () = &mut init_deadline, if user.is_none() => {
                let timeout = close(INIT_TIMEOUT, "Connection initialisation timeout");
                close_with(&mut sink, &mut source, timeout).await;
                break;
            }
            () = &mut expiry, if user.is_some() => {
                let expired = close(UNAUTHORIZED, "Unauthorized: token expired");
                close_with(&mut sink, &mut source, expired).await;
                break;
            }
            () = &mut closing => {
                close_with(&mut sink, &mut source, close(1001, "server shutting down")).await;
                break;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > state.ws.idle_timeout {
                    let _ = sink.send(close(1001, "idle timeout")).await;
                    break;
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() { break; }
            }
        }
    }
    if let Some(actor) = user {
        match state.app.presence.disconnect(actor, &connection_id).await {
            Ok(()) => {
                // The last connection of this user, on any instance, just went.
                if !state.app.presence.is_online(actor).await.unwrap_or(true) {
                    crate::live::publish_presence(&state.app, actor, false).await;
                }
            }
            Err(error) => tracing::warn!(%error, "presence not cleared; it expires by TTL"),
        }
    }
}

async fn touch_presence(app: &App, user: UserId, connection_id: &str) {
    if let Err(error) = app.presence.heartbeat(user, connection_id).await {
        tracing::warn!(%error, "presence heartbeat failed");
    }
}
