//! Rebuilding projections without downtime.
//!
//! A rebuild never touches the live read models until its last, short transaction:
//! 1. create shadow copies of the projections' tables (`messages_view_shadow`, …; `LIKE …
//!    INCLUDING ALL`, so the same columns, constraints and indexes);
//! 2. replay the positioned log into them in batches, one short transaction each, up to the
//!    live checkpoints, while the live tables keep serving and the projector keeps feeding
//!    them;
//! 3. per projection, one transaction: lock its checkpoint row (`FOR UPDATE`, which holds the
//!    projector's next batch back), apply the few events the live tables got meanwhile, swap
//!    the tables (live → `_old`, shadow → live, drop `_old`, give the indexes their names
//!    back) and keep the checkpoint, which now describes the new tables exactly.
//!
//! `read_cursors` belongs to no projection and is never shadowed: the rooms projection only
//! moves cursors forward (`GREATEST`), so replaying into it changes nothing. One rebuild runs
//! at a time (an advisory lock); a crashed one leaves only shadow tables, which the next one
//! drops.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool, Row};

use super::apply::{apply, Projection, Targets};
use super::log_reader::PgEventLog;
use crate::events::EventFilter;
use crate::log::{DecodedEvent, LogEvent};
use crate::read_models::ReadModelError;
use crate::GlobalPosition;

/// The advisory lock that lets one rebuild run at a time ("parley_rebuild").
const REBUILD_LOCK: i64 = 0x7061_726c_6579_7262;

/// How a rebuild is paced.
#[derive(Clone, Debug)]
pub struct RebuildConfig {
    /// Events replayed per transaction.
    pub batch_size: i64,
    /// The longest the swap waits for its checkpoint row (the projector's batch in flight).
    pub checkpoint_lock_timeout: Duration,
    /// The longest the swap waits for the live tables. Kept well below Postgres's
    /// `deadlock_timeout` (1 s by default): a reader that locks the tables in another order
    /// than the swap makes the swap give up and retry, never the reader fail.
    pub table_lock_timeout: Duration,
    /// Attempts (of a swap, or of a replay batch that lost a lock conflict) before the
    /// rebuild fails.
    pub attempts: u32,
}

impl Default for RebuildConfig {
    fn default() -> Self {
        Self {
            batch_size: 5000,
            checkpoint_lock_timeout: Duration::from_secs(2),
            table_lock_timeout: Duration::from_millis(200),
            attempts: 50,
        }
    }
}

/// Where a rebuild is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebuildPhase {
    /// Replaying the log into the shadow tables.
    Replaying,
    /// Swapping the shadow tables in.
    Swapping,
    /// Finished.
    Done,
}

/// Progress of a rebuild, reported after every batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildProgress {
    pub phase: RebuildPhase,
    /// The position the shadow tables have reached.
    pub position: GlobalPosition,
    /// The position they are being brought to (moves on while the log grows).
    pub target: GlobalPosition,
}

/// What a finished rebuild did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    /// The projections rebuilt, with the checkpoint each was swapped in at.
    pub projections: Vec<(String, GlobalPosition)>,
    /// Events replayed.
    pub events: u64,
    pub elapsed: Duration,
}

/// Parses projection names (none: all of them).
pub(crate) fn projections_named(names: &[&str]) -> Result<Vec<Projection>, ReadModelError> {
    if names.is_empty() {
        return Ok(Projection::ALL.to_vec());
    }
    let mut projections = Vec::new();
    for name in names {
        let projection = Projection::parse(name)
            .ok_or_else(|| ReadModelError::UnknownProjection((*name).to_owned()))?;
        if !projections.contains(&projection) {
            projections.push(projection);
        }
    }
    projections.sort();
    Ok(projections)
}

/// Rebuilds `projections` into shadow tables and swaps them in.
pub(crate) async fn rebuild(
    pool: &PgPool,
    projections: &[Projection],
    config: &RebuildConfig,
    progress: &(dyn Fn(RebuildProgress) + Send + Sync),
) -> Result<RebuildReport, ReadModelError> {
    let started = Instant::now();
    let mut guard = pool.acquire().await?.detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(REBUILD_LOCK)
        .fetch_one(&mut guard)
        .await?;
    if !locked {
        let _ = guard.close().await;
        return Err(ReadModelError::RebuildRunning);
    }
    let result = run(pool, projections, config, progress).await;
    if result.is_err() {
        // Shadow tables of a failed rebuild are garbage; the next rebuild would drop them
        // anyway, this just frees the space sooner.
        let _ = drop_shadows(pool, projections).await;
    }
    // Closing the session releases the advisory lock.
    let _ = guard.close().await;
    result.map(|(projections, events)| RebuildReport {
        projections,
        events,
        elapsed: started.elapsed(),
    })
}

async fn run(
    pool: &PgPool,
    projections: &[Projection],
    config: &RebuildConfig,
    progress: &(dyn Fn(RebuildProgress) + Send + Sync),
) -> Result<(Vec<(String, GlobalPosition)>, u64), ReadModelError> {
    create_shadows(pool, projections).await?;
    let log = PgEventLog::new(pool.clone());
    let targets = Targets::shadows_of(projections);
    let mut reached = GlobalPosition::START;
    let mut events = 0u64;
    // Replay until what is left is less than a batch: the swap applies that remainder while
    // it holds the checkpoint, so it stays short.
    loop {
        let target = live_checkpoint(pool, projections).await?;
        progress(RebuildProgress {
            phase: RebuildPhase::Replaying,
            position: reached,
            target,
        });
        if target.0 - reached.0 <= config.batch_size {
            break;
        }
        // The next batch is read while the current one is applied (another connection):
        // reading and decoding cost about as much as applying.
        let mut batch = if reached < target {
            read_batch(&log, reached, target, config.batch_size).await?
        } else {
            Vec::new()
        };
        while let Some((last, _)) = batch.last() {
            let last = last.position;
            let next = async {
                if last < target {
                    read_batch(&log, last, target, config.batch_size).await
                } else {
                    Ok(Vec::new())
                }
            };
            let (applied, next) = tokio::join!(replay_batch(pool, targets, &batch, config), next);
            applied?;
            events += batch.len() as u64;
            reached = last;
            progress(RebuildProgress {
                phase: RebuildPhase::Replaying,
                position: reached,
                target,
            });
            batch = next?;
        }
    }
    for projection in projections {
        for (_, shadow) in projection.tables() {
            sqlx::query(&format!("ANALYZE {shadow}"))
                .execute(pool)
                .await?;
        }
    }
    let mut swapped = Vec::new();
    for &projection in projections {
        let (checkpoint, applied) =
            swap_with_retries(pool, &log, projection, reached, config).await?;
        events += applied;
        swapped.push((projection.name().to_owned(), checkpoint));
        progress(RebuildProgress {
            phase: RebuildPhase::Swapping,
            position: checkpoint,
            target: checkpoint,
        });
    }
    let last = swapped.iter().map(|(_, p)| *p).max().unwrap_or_default();
    progress(RebuildProgress {
        phase: RebuildPhase::Done,
        position: last,
        target: last,
    });
    Ok((swapped, events))
}

/// Applies one batch to the shadows in its own transaction. The rooms projection also moves
/// live read cursors, so a batch can lose a lock conflict with the projector; it is then
/// simply applied again (nothing of it was committed).
async fn replay_batch(
    pool: &PgPool,
    targets: Targets,
    batch: &[(LogEvent, DecodedEvent)],
    config: &RebuildConfig,
) -> Result<(), sqlx::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let mut tx = pool.begin().await?;
            apply(&mut tx, targets, batch).await?;
            tx.commit().await
        }
        .await;
        match result {
            Err(error) if retryable(&error) && attempt < config.attempts => {
                tracing::debug!(%error, attempt, "replay batch conflicted; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            result => return result,
        }
    }
}

/// SQLSTATEs of a conflict worth retrying: a lock wait that ran out (`lock_timeout`), a
/// deadlock, a serialization failure.
fn retryable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Database(e) if matches!(e.code().as_deref(), Some("55P03" | "40P01" | "40001"))
    )
}

/// A short, growing pause before another attempt, so the other side can finish.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(20 * u64::from(attempt.min(10)))
}

async fn read_batch(
    log: &PgEventLog,
    after: GlobalPosition,
    up_to: GlobalPosition,
    limit: i64,
) -> Result<Vec<(LogEvent, DecodedEvent)>, sqlx::Error> {
    let filter = EventFilter::all().capped_at(up_to);
    Ok(log
        .page(after, limit, &filter)
        .await?
        .into_iter()
        .map(|event| {
            let decoded = event.decode();
            (event, decoded)
        })
        .collect())
}

/// The furthest live checkpoint among `projections`: where the shadows must get to.
async fn live_checkpoint(
    pool: &PgPool,
    projections: &[Projection],
) -> Result<GlobalPosition, sqlx::Error> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let position: Option<i64> = sqlx::query_scalar(
        "SELECT max(position) FROM projector_checkpoints WHERE projection = ANY ($1)",
    )
    .bind(&names)
    .fetch_one(pool)
    .await?;
    Ok(GlobalPosition(position.unwrap_or(0)))
}

async fn create_shadows(pool: &PgPool, projections: &[Projection]) -> Result<(), sqlx::Error> {
    drop_shadows(pool, projections).await?;
    for projection in projections {
        for (live, shadow) in projection.tables() {
            sqlx::query(&format!(
                "CREATE TABLE {shadow} (LIKE {live} INCLUDING ALL)"
            ))
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

async fn drop_shadows(pool: &PgPool, projections: &[Projection]) -> Result<(), sqlx::Error> {
    for projection in projections {
        for (_, shadow) in projection.tables() {
            // Looked up first rather than `DROP … IF EXISTS`, whose notice would land in
            // the logs of every rebuild.
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(shadow)
                .fetch_one(pool)
                .await?;
            if exists {
                sqlx::query(&format!("DROP TABLE {shadow}"))
                    .execute(pool)
                    .await?;
            }
        }
    }
    Ok(())
}

async fn swap_with_retries(
    pool: &PgPool,
    log: &PgEventLog,
    projection: Projection,
    reached: GlobalPosition,
    config: &RebuildConfig,
) -> Result<(GlobalPosition, u64), ReadModelError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut conn = pool.acquire().await?;
        match swap(&mut conn, log, projection, reached, config).await {
            Err(error) if retryable(&error) && attempt < config.attempts => {
                tracing::debug!(
                    projection = projection.name(),
                    attempt,
                    %error,
                    "swap gave way to a lock holder; retrying"
                );
                tokio::time::sleep(backoff(attempt)).await;
            }
            result => return Ok(result?),
        }
    }
}

async fn set_lock_timeout(conn: &mut PgConnection, timeout: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        timeout.as_millis().max(1)
    ))
    .execute(conn)
    .await?;
    Ok(())
}

/// The swap transaction of one projection. Returns the checkpoint it was swapped in at and
/// how many events it applied on the way.
async fn swap(
    conn: &mut PgConnection,
    log: &PgEventLog,
    projection: Projection,
    reached: GlobalPosition,
    config: &RebuildConfig,
) -> Result<(GlobalPosition, u64), sqlx::Error> {
    let indexes = index_renames(conn, projection).await?;
    let mut tx = conn.begin().await?;
    set_lock_timeout(&mut tx, config.checkpoint_lock_timeout).await?;
    // From here until commit the projector cannot apply a batch to this projection.
    let checkpoint: i64 = sqlx::query_scalar(
        "SELECT position FROM projector_checkpoints WHERE projection = $1 FOR UPDATE",
    )
    .bind(projection.name())
    .fetch_one(&mut *tx)
    .await?;
    let checkpoint = GlobalPosition(checkpoint);
    let mut applied = 0u64;
    let mut at = reached;
    while at < checkpoint {
        let batch = read_batch(log, at, checkpoint, config.batch_size).await?;
        let Some((last, _)) = batch.last() else {
            break;
        };
        at = last.position;
        apply(&mut tx, Targets::shadows_of(&[projection]), &batch).await?;
        applied += batch.len() as u64;
    }
    if at > checkpoint {
        // The projection was behind (reset, catching up): the shadow is further along, and
        // the checkpoint follows it.
        sqlx::query(
            "UPDATE projector_checkpoints SET position = $2, updated_at = now() WHERE projection = $1",
        )
        .bind(projection.name())
        .bind(at.0)
        .execute(&mut *tx)
        .await?;
    }
    // All the tables at once, before any rename: waiting for one while holding another is
    // how a swap and a reader joining both tables in the other order would deadlock. A short
    // timeout makes the swap the one that backs off.
    set_lock_timeout(&mut tx, config.table_lock_timeout).await?;
    let tables: Vec<&str> = projection
        .tables()
        .iter()
        .flat_map(|(live, shadow)| [*live, *shadow])
        .collect();
    sqlx::query(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        tables.join(", ")
    ))
    .execute(&mut *tx)
    .await?;
    for (live, shadow) in projection.tables() {
        sqlx::query(&format!("ALTER TABLE {live} RENAME TO {live}_old"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER TABLE {shadow} RENAME TO {live}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("DROP TABLE {live}_old"))
            .execute(&mut *tx)
            .await?;
    }
    for (from, to) in &indexes {
        sqlx::query(&format!("ALTER INDEX {from} RENAME TO {to}"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok((at.max(checkpoint), applied))
}

/// For each index of the projection's shadow tables, the name its live twin has: after the
/// swap the new tables carry the names the schema gave (constraints follow their indexes).
async fn index_renames(
    conn: &mut PgConnection,
    projection: Projection,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut renames = Vec::new();
    for (live, shadow) in projection.tables() {
        let live_indexes = index_definitions(conn, live).await?;
        let shadow_indexes = index_definitions(conn, shadow).await?;
        for (shape, shadow_name) in shadow_indexes {
            if let Some(live_name) = live_indexes.get(&shape) {
                if *live_name != shadow_name {
                    renames.push((shadow_name, live_name.clone()));
                }
            }
        }
    }
    Ok(renames)
}

/// A table's indexes by shape (the definition without index and table names).
async fn index_definitions(
    conn: &mut PgConnection,
    table: &str,
) -> Result<BTreeMap<String, String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT i.relname AS name, pg_get_indexdef(i.oid) AS definition
           FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
          WHERE x.indrelid = $1::regclass",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let name: String = row.get("name");
            let definition: String = row.get("definition");
            // "CREATE [UNIQUE] INDEX <name> ON <table> USING btree (...) [WHERE ...]"
            let unique = definition.starts_with("CREATE UNIQUE");
            let shape = definition
                .split_once(" USING ")
                .map_or(definition.as_str(), |(_, rest)| rest);
            (format!("{unique} {shape}"), name)
        })
        .collect())
}
