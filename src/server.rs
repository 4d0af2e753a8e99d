//! Running the server: on a listener the caller binds (tests bind port 0), until an injected
//! shutdown future completes.

use std::future::Future;

use tokio::net::TcpListener;

use crate::app::App;
use crate::graphql::WsConfig;
use crate::http;

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
    let addr = listener.local_addr()?;
    tracing::info!(%addr, store = app.log.kind(), relay = ?app.relay.kind(), "listening");
    let served = axum::serve(listener, http::router_with(app.clone(), ws))
        .with_graceful_shutdown(shutdown)
        .await;
    app.stop().await;
    tracing::info!("stopped");
    served
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
