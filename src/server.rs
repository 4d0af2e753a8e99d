//! Running the server: on a listener the caller binds (tests bind port 0), until an injected
//! shutdown future completes.

use std::future::Future;

use tokio::net::TcpListener;

use crate::app::App;
use crate::http;

/// Serves `app` on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn run(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, store = app.log.kind(), "listening");
    let served = axum::serve(listener, http::router(app.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    app.stop().await;
    tracing::info!("stopped");
    served
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
}
