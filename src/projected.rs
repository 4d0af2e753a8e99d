//! How far the read models have got, as this instance knows it: the newest projector
//! checkpoint, pushed to every instance (never polled). Read-your-writes waits on it: after
//! a command, a query waits until the read models hold what the command wrote.
//!
//! With Postgres the projector announces each checkpoint with `NOTIFY parley_checkpoint`
//! in the transaction that moves it, so whichever instance projects, every instance hears
//! it at commit. A lost listener connection is followed by one read of the checkpoints when
//! it is back. The embedded store has its projector in-process and reports through the
//! live feed.

use std::time::Duration;

use parley_projections::{GlobalPosition, LiveFeed};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};

/// The notification channel the projector announces checkpoints on.
pub const CHANNEL: &str = "parley_checkpoint";

/// The newest checkpoint known here. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Projected {
    position: watch::Receiver<GlobalPosition>,
}

impl Projected {
    /// Follows the Postgres projector's announcements until `stop` completes.
    pub fn postgres(
        pool: PgPool,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (sender, position) = watch::channel(GlobalPosition::START);
        (Self { position }, follow_postgres(pool, sender, stop))
    }

    /// Follows the embedded projector's live feed until `stop` completes.
    pub fn embedded(
        live: &LiveFeed,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (sender, position) = watch::channel(GlobalPosition::START);
        let batches = live.subscribe();
        (Self { position }, follow_feed(batches, sender, stop))
    }

    /// The newest checkpoint known now.
    pub fn now(&self) -> GlobalPosition {
        *self.position.borrow()
    }

    /// A receiver that wakes on each new checkpoint (for a wait that re-checks a condition:
    /// take it before reading, so no move between the read and the wait is missed).
    pub fn watch(&self) -> watch::Receiver<GlobalPosition> {
        let mut receiver = self.position.clone();
        receiver.mark_unchanged();
        receiver
    }

    /// Waits until the read models hold `position`, or `timeout` passes. Whether they do.
    pub async fn reached(&self, position: GlobalPosition, timeout: Duration) -> bool {
        let mut receiver = self.position.clone();
        let waited = tokio::time::timeout(timeout, receiver.wait_for(|&p| p >= position)).await;
        matches!(waited, Ok(Ok(_)))
    }
}

fn advance(sender: &watch::Sender<GlobalPosition>, position: GlobalPosition) {
    sender.send_if_modified(|known| {
        let newer = position > *known;
        if newer {
            *known = position;
        }
        newer
    });
}

async fn newest_checkpoint(pool: &PgPool) -> Result<GlobalPosition, sqlx::Error> {
    sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM projector_checkpoints")
        .fetch_one(pool)
        .await
        .map(GlobalPosition)
}

async fn follow_postgres(
    pool: PgPool,
    sender: watch::Sender<GlobalPosition>,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(stop);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for projector checkpoints; retrying");
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if let Err(error) = listener.listen(CHANNEL).await {
            tracing::warn!(%error, "cannot listen for projector checkpoints; retrying");
            continue;
        }
        // Listening now: what moved before is read once.
        match newest_checkpoint(&pool).await {
            Ok(position) => advance(&sender, position),
            Err(error) => tracing::warn!(%error, "cannot read the projector checkpoints"),
        }
        loop {
            tokio::select! {
                () = &mut stop => return,
                notification = listener.try_recv() => match notification {
                    Ok(Some(notification)) => match notification.payload().parse::<i64>() {
                        Ok(position) => advance(&sender, GlobalPosition(position)),
                        Err(_) => tracing::warn!(payload = notification.payload(), "unexpected checkpoint notification"),
                    },
                    // The connection was lost; listen again and catch up.
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "checkpoint notifications interrupted");
                        break;
                    }
                },
            }
        }
    }
}

async fn follow_feed(
    mut batches: broadcast::Receiver<parley_projections::log::LiveBatch>,
    sender: watch::Sender<GlobalPosition>,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            batch = batches.recv() => match batch {
                Ok(batch) => {
                    if let Some((last, _)) = batch.last() {
                        advance(&sender, last.position);
                    }
                }
                // Missed batches: the next one carries a newer position anyway.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
