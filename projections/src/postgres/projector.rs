//! The Postgres projector: sequencer of the global log and feeder of the read models.
//!
//! One instance at a time holds a session advisory lock on a dedicated connection and does
//! all its work on that connection, so losing the connection loses the lock and aborts the
//! batch together: two projectors can never both write. Standbys retry the lock every
//! `standby_retry` and take over within that time when the active one dies.
//!
//! Events carry their global position from the moment they are inserted (the writers take
//! positions from `log_head` under its row lock, so every snapshot sees a gap-free prefix of
//! the log: see the migration `positions_at_insert`). The projector therefore only reads
//! forward by position. Each step:
//! 1. reads the events after the newest checkpoint, in position order (one statement, no
//!    transaction; this is all an idle wake-up costs);
//! 2. if there are any: locks the checkpoints, applies the events to every projection that
//!    is caught up and moves its checkpoint, announcing it with `NOTIFY parley_checkpoint`
//!    (read-your-writes waits on it, on every instance), in one transaction;
//! 3. commits, then publishes the batch to the live feed.
//!
//! A projection that is behind the newest checkpoint (after a rebuild) catches up to it in
//! steps of its own, without publishing those events live (they were published when they
//! were new).
//!
//! Liveness: the lock lasts as long as the session, so a session that goes silent without
//! closing (a half-open link: the peer stops answering) must not last long. The active
//! session asks the server to end it after `session_timeout` without a word from the
//! projector (`idle_session_timeout`, `idle_in_transaction_session_timeout`, and
//! `tcp_user_timeout` for data the server cannot deliver), and talks at least every third
//! of that (a step is the heartbeat), so a silent link frees the lock for a standby within
//! about `session_timeout + standby_retry`. On its side, a step (or an activation) that
//! takes longer than `step_timeout` (also the session's `statement_timeout`) is given up
//! and the projector starts over as a standby.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::TryStreamExt;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool, Row};
use std::sync::Arc;

use super::apply::{apply, Targets};
use super::log_reader::log_event;
use crate::live::LiveFeed;
use crate::log::{DecodedEvent, LogEvent};
use crate::PROJECTIONS;

/// The advisory lock key that makes one projector active ("parley_projector").
pub const LOCK_KEY: i64 = 0x7061_726c_6579_7072;

/// Tuning of the projector.
#[derive(Clone, Debug)]
pub struct ProjectorConfig {
    /// Most events read and applied in one transaction.
    pub batch_size: i64,
    /// Longest wait without a NOTIFY before looking for events anyway.
    pub poll_interval: Duration,
    /// How often a standby tries to become active.
    pub standby_retry: Duration,
    /// The server ends the active session after this long without a word from the
    /// projector, releasing the lock; the projector talks at least every third of it.
    pub session_timeout: Duration,
    /// Watchdog: a step or an activation that takes longer is given up (the session is
    /// dropped); also the session's `statement_timeout`.
    pub step_timeout: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            batch_size: 2000,
            poll_interval: Duration::from_secs(1),
            standby_retry: Duration::from_secs(1),
            session_timeout: Duration::from_secs(5),
            step_timeout: Duration::from_secs(30),
        }
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// New events applied to the caught-up projections (and published live).
    pub sequenced: usize,
    /// Events applied to projections that were behind.
    pub caught_up: usize,
}

impl StepOutcome {
    pub fn did_work(&self) -> bool {
        self.sequenced > 0 || self.caught_up > 0
    }
}

/// The projector of one server instance (active or standby).
#[derive(Clone, Debug)]
pub struct PgProjector {
    pool: PgPool,
    live: LiveFeed,
    config: ProjectorConfig,
}

/// An active projector's connection, holding the advisory lock.
#[derive(Debug)]
pub struct ActiveSession {
    conn: PgConnection,
    /// The newest checkpoint as of this session's last step (`None`: not read yet).
    frontier: Option<i64>,
}

const EVENT_COLUMNS: &str = "position, aggregate_type, aggregate_id, sequence, event_type,
                             event_version, event_payload(payload, erasable) AS payload, metadata, recorded_at";

impl PgProjector {
    pub fn new(pool: PgPool, live: LiveFeed, config: ProjectorConfig) -> Self {
        Self { pool, live, config }
    }

    pub fn live(&self) -> &LiveFeed {
        &self.live
    }

    /// Tries to become the active projector. `None`: another instance is active. The session
    /// lasts as long as its holder keeps it (for tools that drive [`Self::step`] themselves);
    /// [`Self::run`]'s sessions end when they fall silent.
    pub async fn try_activate(&self) -> Result<Option<ActiveSession>, sqlx::Error> {
        self.activate(false).await
    }

    async fn activate(&self, bounded: bool) -> Result<Option<ActiveSession>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?.detach();
        if bounded {
            self.bound_session(&mut conn).await?;
        }
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if locked {
            Ok(Some(ActiveSession {
                conn,
                frontier: None,
            }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Makes the server end this session when the projector falls silent (see the module
    /// documentation). A setting the server does not know (before PostgreSQL 14 for
    /// `idle_session_timeout`) is skipped with a warning.
    async fn bound_session(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let millis = |d: Duration| d.as_millis().max(1).to_string();
        let session = millis(self.config.session_timeout);
        let settings = [
            ("statement_timeout", millis(self.config.step_timeout)),
            ("idle_in_transaction_session_timeout", session.clone()),
            ("idle_session_timeout", session.clone()),
            ("tcp_user_timeout", session),
        ];
        for (name, value) in settings {
            let set = sqlx::query("SELECT set_config($1, $2, false)")
                .bind(name)
                .bind(&value)
                .execute(&mut *conn)
                .await;
            match set {
                Ok(_) => {}
                Err(sqlx::Error::Database(error)) => {
                    tracing::warn!(setting = name, %error, "projector session setting refused");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// `future`, given up after `step_timeout`.
    async fn watched<T>(
        &self,
        what: &str,
        future: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        tokio::time::timeout(self.config.step_timeout, future)
            .await
            .unwrap_or_else(|_| {
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("projector {what} took over {:?}", self.config.step_timeout),
                )))
            })
    }

    /// One sequencing step and, if a projection is behind, one catch-up step.
    pub async fn step(&self, session: &mut ActiveSession) -> Result<StepOutcome, sqlx::Error> {
        let sequenced = self.sequence(session).await?;
        let caught_up = self.catch_up(&mut session.conn).await?;
        Ok(StepOutcome {
            sequenced,
            caught_up,
        })
    }

    /// Steps until nothing is left to do right now.
    pub async fn drain(&self, session: &mut ActiveSession) -> Result<(), sqlx::Error> {
        loop {
            let outcome = self.step(session).await?;
            if !outcome.did_work() {
                return Ok(());
            }
        }
    }

    async fn sequence(&self, session: &mut ActiveSession) -> Result<usize, sqlx::Error> {
        let conn = &mut session.conn;
        if let Some(frontier) = session.frontier {
            // The cheap look: nothing new (and no checkpoint moved by someone else, e.g. a
            // reset) means no transaction at all.
            let newer: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events WHERE position = $1 + 1)
                     OR (SELECT max(position) FROM projector_checkpoints) IS DISTINCT FROM $1",
            )
            .bind(frontier)
            .fetch_one(&mut *conn)
            .await?;
            if !newer {
                return Ok(0);
            }
        }
        let mut tx = conn.begin().await?;
        let checkpoints = lock_checkpoints(&mut tx).await?;
        let frontier = checkpoints.values().copied().max().unwrap_or(0);
        let batch: Vec<(LogEvent, DecodedEvent)> = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events
              WHERE position > $1
              ORDER BY position
              LIMIT $2"
        ))
        .bind(frontier)
        .bind(self.config.batch_size)
        .fetch(&mut *tx)
        .map_ok(|row| {
            let event = log_event(&row);
            let decoded = event.decode();
            (event, decoded)
        })
        .try_collect()
        .await?;
        let Some((last, _)) = batch.last() else {
            tx.rollback().await?;
            session.frontier = Some(frontier);
            return Ok(0);
        };
        let new_frontier = last.position.0;
        let caught_up: Vec<&str> = checkpoints
            .iter()
            .filter(|(_, &position)| position == frontier)
            .map(|(name, _)| name.as_str())
            .collect();
        apply(&mut tx, Targets::of(&caught_up), &batch).await?;
        set_checkpoints(&mut tx, &caught_up, new_frontier).await?;
        tx.commit().await?;
        session.frontier = Some(new_frontier);
        let count = batch.len();
        self.live.publish(Arc::new(batch));
        Ok(count)
    }

    async fn catch_up(&self, conn: &mut PgConnection) -> Result<usize, sqlx::Error> {
        let mut tx = conn.begin().await?;
        let checkpoints = lock_checkpoints(&mut tx).await?;
        // Projections behind the newest checkpoint catch up to it; what lies beyond it is
        // new, and [`Self::sequence`] applies (and publishes) it to all of them together.
        let head = checkpoints.values().copied().max().unwrap_or(0);
        let Some(lowest) = checkpoints.values().copied().filter(|&p| p < head).min() else {
            tx.rollback().await?;
            return Ok(0);
        };
        let behind: Vec<&str> = checkpoints
            .iter()
            .filter(|(_, &position)| position == lowest)
            .map(|(name, _)| name.as_str())
            .collect();
        let batch: Vec<(LogEvent, DecodedEvent)> = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events
              WHERE position > $1 AND position <= $2
              ORDER BY position
              LIMIT $3"
        ))
        .bind(lowest)
        .bind(head)
        .bind(self.config.batch_size)
        .fetch(&mut *tx)
        .map_ok(|row| {
            let event = log_event(&row);
            let decoded = event.decode();
            (event, decoded)
        })
        .try_collect()
        .await?;
        let Some((last, _)) = batch.last() else {
            tx.rollback().await?;
            return Ok(0);
        };
        let reached = last.position.0;
        apply(&mut tx, Targets::of(&behind), &batch).await?;
        set_checkpoints(&mut tx, &behind, reached).await?;
        tx.commit().await?;
        Ok(batch.len())
    }

    /// Runs until `shutdown` completes: standby until the lock is won, then active. Errors
    /// (a lost connection) are logged and the projector starts over, as a standby.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        loop {
            let session = tokio::select! {
                () = &mut shutdown => return,
                session = self.watched("activation", self.activate(true)) => session,
            };
            match session {
                Ok(Some(session)) => {
                    tracing::info!("projector active");
                    match self.run_active(session, &mut shutdown).await {
                        Ok(()) => return,
                        Err(error) => tracing::error!(%error, "projector stopped; will retry"),
                    }
                }
                Ok(None) => tracing::debug!("projector standing by"),
                Err(error) => tracing::warn!(%error, "projector cannot reach the database"),
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(self.config.standby_retry) => {}
            }
        }
    }

    /// Works while active. Returns `Ok` only on shutdown.
    async fn run_active(
        &self,
        mut session: ActiveSession,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen("parley_events").await?;
        loop {
            let outcome = tokio::select! {
                () = shutdown.as_mut() => return Ok(()),
                outcome = self.watched("step", self.step(&mut session)) => outcome?,
            };
            if outcome.did_work() {
                continue;
            }
            // The next step is also the heartbeat that keeps the session alive.
            let wait = self
                .config
                .poll_interval
                .min(self.config.session_timeout / 3);
            tokio::select! {
                () = shutdown.as_mut() => return Ok(()),
                notified = listener.recv() => {
                    if let Err(error) = notified {
                        // PgListener reconnects by itself; meanwhile the poll covers us.
                        tracing::warn!(%error, "event notifications interrupted");
                        tokio::time::sleep(self.config.poll_interval).await;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

async fn lock_checkpoints(conn: &mut PgConnection) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT projection, position FROM projector_checkpoints
          WHERE projection = ANY ($1) FOR UPDATE",
    )
    .bind(&PROJECTIONS[..])
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<String, _>("projection"),
                r.get::<i64, _>("position"),
            )
        })
        .collect())
}

/// Moves the checkpoints of `projections` to `position` and announces the new position on
/// `parley_checkpoint` (delivered at commit).
async fn set_checkpoints(
    conn: &mut PgConnection,
    projections: &[&str],
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH moved AS (
             UPDATE projector_checkpoints SET position = $2, updated_at = now()
              WHERE projection = ANY ($1)
         )
         SELECT pg_notify('parley_checkpoint', $2::text)",
    )
    .bind(projections)
    .bind(position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
