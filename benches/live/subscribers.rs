//! Subscribers: WebSockets subscribed to every room, and the taps that stamp each message
//! where it passes (the live feed, Redis).

#[allow(unused_imports)]
use super::*;

/// One `next` frame: which room (subscription id), which seq, when it was read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Receipt {
    pub(crate) room: usize,
    pub(crate) seq: i64,
    pub(crate) at: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct Received {
    /// `next` frames with a seq, all subscribers together.
    pub(crate) next: AtomicUsize,
    /// `error`/`complete` frames, `next` with errors, unreadable frames.
    pub(crate) refused: AtomicUsize,
    /// Connections that ended before the bench closed them.
    pub(crate) lost: AtomicUsize,
}

/// Opens a graphql-transport-ws connection as `token` and subscribes to every room
/// (subscription id = the room's index).
pub(crate) async fn subscribe_all(
    addr: std::net::SocketAddr,
    token: &str,
    rooms: &[String],
) -> Socket {
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
pub(crate) async fn read(
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
pub(crate) async fn tap(
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
pub(crate) async fn redis_tap(
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
