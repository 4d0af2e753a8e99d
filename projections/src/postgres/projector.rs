//! The Postgres projector: sequencer of the global log and feeder of the read models.
//!
//! One instance at a time holds a session advisory lock on a dedicated connection and does
//! all its work on that connection, so losing the connection loses the lock and aborts the
//! batch together: two projectors can never both write. Standbys retry the lock every
//! `standby_retry` and take over within that time when the active one dies.
//!
//! Each step is one short transaction:
//! 1. read the next unpositioned events that are safe to order — written by transactions
//!    below `pg_snapshot_xmin(pg_current_snapshot())`, so all of them have ended — in
//!    `(transaction_id, id)` order (first statement: this transaction has no xid yet);
//! 2. lock the checkpoints;
//! 3. stamp positions `head + 1 …` on those events;
//! 4. apply them to every projection that is caught up, and move its checkpoint;
//! 5. commit, then publish the batch to the live feed.
//!
//! A projection that is behind (after a rebuild) catches up from positioned events in
//! steps of its own, without publishing them live.
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
use super::log_reader::log_event_at;
use crate::live::LiveFeed;
use crate::log::{DecodedEvent, LogEvent};
use crate::PROJECTIONS;

/// The advisory lock key that makes one projector active ("parley_projector").
const LOCK_KEY: i64 = 0x7061_726c_6579_7072;

/// Tuning of the projector.
#[derive(Clone, Debug)]
pub struct ProjectorConfig {
    /// Most events read and applied in one transaction.
    pub batch_size: i64,
    /// Longest wait without a NOTIFY before looking for events anyway.
    pub poll_interval: Duration,
    /// How often a standby tries to become active.
    pub standby_retry: Duration,
    /// Wait before looking again when committed events are not yet safe to order (an
    /// older transaction is still running).
    pub not_yet_visible_retry: Duration,
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
            not_yet_visible_retry: Duration::from_millis(2),
            session_timeout: Duration::from_secs(5),
            step_timeout: Duration::from_secs(30),
        }
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// Events newly given a position (and applied to caught-up projections).
    pub sequenced: usize,
    /// Positioned events applied to projections that were behind.
    pub caught_up: usize,
    /// Unpositioned events exist that could not be ordered yet.
    pub waiting: bool,
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
}

const EVENT_COLUMNS: &str = "id, position, aggregate_type, aggregate_id, sequence, event_type,
                             event_version, payload, metadata, recorded_at";

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
            Ok(Some(ActiveSession { conn }))
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
        let (sequenced, waiting) = self.sequence(&mut session.conn).await?;
        let caught_up = self.catch_up(&mut session.conn).await?;
        Ok(StepOutcome {
            sequenced,
            caught_up,
            waiting,
        })
    }

    /// Steps until nothing is left to do right now.
    pub async fn drain(&self, session: &mut ActiveSession) -> Result<(), sqlx::Error> {
        loop {
            let outcome = self.step(session).await?;
            if !outcome.did_work() {
                if outcome.waiting {
                    tokio::time::sleep(self.config.not_yet_visible_retry).await;
                    continue;
                }
                return Ok(());
            }
        }
    }

    async fn sequence(&self, conn: &mut PgConnection) -> Result<(usize, bool), sqlx::Error> {
        let mut tx = conn.begin().await?;
        // First statement: this transaction has no xid yet, so it cannot hold xmin back.
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events
              WHERE position IS NULL
                AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY transaction_id, id
              LIMIT $1"
        ))
        .bind(self.config.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            let waiting: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE position IS NULL)")
                    .fetch_one(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return Ok((0, waiting));
        }
        let checkpoints = lock_checkpoints(&mut tx).await?;
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;

        let ids: Vec<i64> = rows.iter().map(|r| r.get::<i64, _>("id")).collect();
        let positions: Vec<i64> = (head + 1..).take(rows.len()).collect();
        sqlx::query(
            "UPDATE events e SET position = u.position
               FROM unnest($1::bigint[], $2::bigint[]) AS u(id, position)
              WHERE e.id = u.id",
        )
        .bind(&ids)
        .bind(&positions)
        .execute(&mut *tx)
        .await?;

        let batch: Vec<(LogEvent, DecodedEvent)> = rows
            .iter()
            .zip(&positions)
            .map(|(row, &position)| {
                let event = log_event_at(row, position);
                let decoded = event.decode();
                (event, decoded)
            })
            .collect();
        let caught_up: Vec<&str> = checkpoints
            .iter()
            .filter(|(_, &position)| position == head)
            .map(|(name, _)| name.as_str())
            .collect();
        let new_head = head + batch.len() as i64;
        if !caught_up.is_empty() {
            apply(&mut tx, Targets::of(&caught_up), &batch).await?;
            set_checkpoints(&mut tx, &caught_up, new_head).await?;
        }
        tx.commit().await?;
        let count = batch.len();
        self.live.publish(Arc::new(batch));
        Ok((count, false))
    }

    async fn catch_up(&self, conn: &mut PgConnection) -> Result<usize, sqlx::Error> {
        let mut tx = conn.begin().await?;
        let checkpoints = lock_checkpoints(&mut tx).await?;
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;
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
            let position = row.get("position");
            let event = log_event_at(&row, position);
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
            let wait = if outcome.waiting {
                self.config.not_yet_visible_retry
            } else {
                // The next step is also the heartbeat that keeps the session alive.
                self.config
                    .poll_interval
                    .min(self.config.session_timeout / 3)
            };
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

async fn set_checkpoints(
    conn: &mut PgConnection,
    projections: &[&str],
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projector_checkpoints SET position = $2, updated_at = now()
          WHERE projection = ANY ($1)",
    )
    .bind(projections)
    .bind(position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
