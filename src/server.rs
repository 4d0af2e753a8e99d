//! Running the server: on a listener the caller binds (tests bind port 0), until an injected
//! shutdown future completes.
//!
//! Connections are bounded: a client has [`HttpLimits::header_timeout`] to send a request's
//! headers (slow-loris) and an idle keep-alive connection is closed after the same time; a
//! request has [`HttpLimits::request_timeout`] to be answered; and at most
//! `max_connections` are open at once (further clients wait in the listen backlog), which by
//! default leaves headroom below the open-file limit for the database, Redis and logs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::app::App;
use crate::config::HttpLimits;
use crate::graphql::ClientIp;
use crate::http;
use crate::ws::WsConfig;

/// File descriptors kept free of client connections by default (database and Redis
/// connections, log files, the listener).
pub const FD_HEADROOM: u64 = 512;

/// The connection cap when none is configured: the soft open-file limit less
/// [`FD_HEADROOM`], at least 64.
pub fn default_max_connections() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    usize::try_from(soft.saturating_sub(FD_HEADROOM).max(64)).unwrap_or(usize::MAX)
}

/// Serves `app` on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn run(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(listener, app, WsConfig::default(), shutdown).await
}

/// [`run`] with WebSocket limits of the caller's choosing.
pub async fn run_with(
    listener: TcpListener,
    app: App,
    ws: WsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_limited(listener, app, ws, HttpLimits::default(), shutdown).await
}

/// [`run_with`] with connection limits of the caller's choosing.
pub async fn run_limited(
    listener: TcpListener,
    app: App,
    ws: WsConfig,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_serving(listener, None, app, ws, limits, shutdown).await
}

/// Connections a metrics listener accepts at once (scrapers, not clients).
const METRICS_CONNECTIONS: usize = 16;

/// [`run_limited`], with `/metrics` on `metrics` instead of the API's listener when given
/// (the API then answers 404 there). Both stop on `shutdown`.
pub async fn run_serving(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    app: App,
    ws: WsConfig,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = tokio_util::sync::CancellationToken::new();
    let scraped = match metrics {
        Some(metrics) => {
            tracing::info!(metrics = %metrics.local_addr()?, "serving /metrics");
            let router = http::metrics_router(app.clone());
            let stop = stopping.clone().cancelled_owned();
            Some(tokio::spawn(serve(
                metrics,
                router,
                limits,
                METRICS_CONNECTIONS,
                stop,
            )))
        }
        None => None,
    };
    let placement = if scraped.is_some() {
        http::Metrics::Elsewhere
    } else {
        http::Metrics::Here
    };
    let stop = stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stop.cancel();
    };
    let served = run_api(listener, placement, app, ws, limits, shutdown).await;
    stopping.cancel();
    if let Some(scraped) = scraped {
        match scraped.await {
            Ok(Err(error)) => tracing::warn!(%error, "the metrics listener failed"),
            Err(error) => tracing::warn!(%error, "the metrics listener panicked"),
            Ok(Ok(())) => {}
        }
    }
    served
}

async fn run_api(
    listener: TcpListener,
    metrics: http::Metrics,
    app: App,
    ws: WsConfig,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let max_connections = limits
        .max_connections
        .unwrap_or_else(default_max_connections)
        .max(1);
    tracing::info!(
        %addr,
        store = app.log.kind(),
        relay = ?app.relay.kind(),
        max_connections,
        "listening"
    );
    let request_timeout = limits.request_timeout;
    let router = http::api_router(app.clone(), ws, metrics).layer(middleware::from_fn(
        move |request: Request, next: Next| answer_within(request_timeout, request, next),
    ));
    let sockets = app.sockets.clone();
    let shutdown = async move {
        shutdown.await;
        sockets.close_all();
    };
    let served = serve(listener, router, limits, max_connections, shutdown).await;
    let left_open = app.sockets.closed(SOCKET_CLOSE_GRACE).await;
    if left_open > 0 {
        tracing::warn!(
            left_open,
            "WebSockets still open at the end of the grace period"
        );
    }
    app.stop().await;
    tracing::info!("stopped");
    served
}

/// How long a shutdown waits for WebSocket clients to answer the close frame.
const SOCKET_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The response to a request answered within `limit`, else `UNAVAILABLE` (HTTP 503).
async fn answer_within(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("parley_request_timeouts_total").increment(1);
            let message = format!("no answer within {} s; retry later", limit.as_secs());
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(crate::graphql::refusal_body("UNAVAILABLE", &message)),
            )
                .into_response()
        }
    }
}

/// The accept loop: one task per connection, each holding a slot of the connection cap.
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // HTTP/1 only: the protocol sniffing of the auto builder has no timeout of its own.
    builder = builder.http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors or similar: wait instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service =
            router
                .clone()
                .map_request(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ClientIp(peer.ip()));
                    request
                        .extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(peer));
                    request
                });
        let stream = IdleTimeout::new(stream, limits.header_timeout, limits.idle_timeout);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A connection that fails with `TimedOut` when nothing was read or written for a while:
/// `first` until its first bytes (hyper's header timeout only starts then), `idle` after.
/// Counting writes as activity keeps a streaming response or a WebSocket the server pings
/// alive; a client that neither sends nor reads is dropped.
struct IdleTimeout<T> {
    inner: T,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    idle: Duration,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, first: Duration, idle: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(first)),
            idle,
        }
    }

    fn active(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle for too long")
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.active();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.active();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives while the server
/// is still starting is not lost (nor does it kill the process the default way).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let wait = |stream: std::io::Result<tokio::signal::unix::Signal>,
                        name: &'static str| async move {
                match stream {
                    Ok(mut stream) => {
                        stream.recv().await;
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = wait(interrupt, "SIGINT") => {},
                () = wait(terminate, "SIGTERM") => {},
            }
            tracing::info!("shutdown requested");
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            tracing::info!("shutdown requested");
        }
    }
}
