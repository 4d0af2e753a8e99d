//! Group commit: the commands that arrive while a commit is in flight are carried out
//! together, and all their events go to the log in one transaction.
//!
//! One [`Pipeline`] per aggregate type runs a writer task. The writer takes every command
//! waiting in its queue (up to [`MAX_BATCH`]); runs each against its aggregate in memory,
//! in arrival order per aggregate, several on one aggregate in the same batch
//! (cqrs-es's `Aggregate::handle`, whose events the `EventSink` applies as they are
//! written); and appends all accepted events with one [`EventLog::append_batch`]. There is
//! no fixed delay: a lone command commits at once, and batches grow with the load while a
//! commit is in flight.
//!
//! Each caller gets its own result. A command the aggregate refuses fails alone and writes
//! nothing. Aggregates come from the instance's cache without any read; if another
//! instance wrote first, the append reports the colliding events, and only the aggregates
//! concerned are reloaded and their commands run again. A collision on a unique key with an
//! unchanged aggregate (a clientMsgId or username already used) is answered by
//! [`Batched::on_unique_collision`]. If the connection fails mid-append, the writer asks
//! the log whether the batch committed before it answers, so an error always means that
//! nothing was stored.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, AggregateContext, EventEnvelope, EventStore};
use parley_projections::GlobalPosition;
use tokio::sync::{mpsc, oneshot};

use super::{CommandError, StoreError};
use crate::store::{AggregateStore, AppendError, EventLog, LoadedAggregate, WriteTurn};

/// Most commands carried out in one batch.
pub const MAX_BATCH: usize = 1024;

/// How often one batch is tried again after collisions before its remaining commands get
/// [`CommandError::Conflict`]. From round [`ALONE_AFTER_ROUNDS`] on the writer writes alone
/// (a write turn), where only a unique key can collide, so this is a safety net.
pub const MAX_ROUNDS: u32 = 64;

/// Lost races after which a writer takes a write turn (see [`EventLog::write_turn`]).
const ALONE_AFTER_ROUNDS: u32 = 2;

/// Commands queued for a writer before senders wait (back-pressure).
const QUEUE: usize = 16 * MAX_BATCH;

/// An aggregate the batch writer can carry: what a unique-key collision means for it.
pub trait Batched:
    Aggregate<Command: Clone + Send, Event: Clone + Send, Error: Send, Services: 'static>
    + Clone
    + 'static
{
    /// What `command` gets when one of its events hit a unique key of the store while its
    /// aggregate had not changed: the key itself was taken.
    fn on_unique_collision(command: &Self::Command) -> Collision<Self::Error>;
}

/// The meaning of a unique-key collision for one command.
#[derive(Debug)]
pub enum Collision<E> {
    /// The command was carried out before (a repeated clientMsgId): it succeeds with no new
    /// event, and its caller finds the original in the log.
    AlreadyDone,
    /// The command is refused with this error.
    Refused(E),
}

/// What a command appended.
#[derive(Debug)]
pub struct Committed<A: Aggregate> {
    /// Its events with their sequence numbers; empty when it changed nothing.
    pub events: Vec<EventEnvelope<A>>,
    /// The global position of its last event (`START` when it appended none).
    pub position: GlobalPosition,
}

type Reply<A> = Result<Committed<A>, CommandError<<A as Aggregate>::Error>>;

struct Job<A: Aggregate> {
    aggregate_id: String,
    command: A::Command,
    metadata: HashMap<String, String>,
    reply: oneshot::Sender<Reply<A>>,
}

impl<A: Aggregate> Job<A> {
    fn answer(self, reply: Reply<A>) {
        // A caller that gave up (its request was dropped) no longer listens; what was
        // committed stays committed, and a retry with the same key finds it.
        let _ = self.reply.send(reply);
    }
}

/// The queue in front of one aggregate type's writer. Dropping every clone stops the writer
/// once the queue is empty.
pub struct Pipeline<A: Aggregate> {
    queue: mpsc::Sender<Job<A>>,
}

impl<A: Aggregate> std::fmt::Debug for Pipeline<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("aggregate_type", &A::TYPE)
            .finish_non_exhaustive()
    }
}

impl<A> Pipeline<A>
where
    A: Batched,
{
    /// Starts the writer task (needs a Tokio runtime).
    pub fn start(store: AggregateStore<A>, log: EventLog, services: A::Services) -> Self {
        let (queue, commands) = mpsc::channel(QUEUE);
        let writer = Writer {
            store,
            log,
            services,
        };
        tokio::spawn(writer.run(commands));
        Self { queue }
    }

    /// Carries out one command in the next batch and waits until it is durable (or refused).
    pub async fn execute(
        &self,
        aggregate_id: String,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Reply<A> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            aggregate_id,
            command,
            metadata,
            reply,
        };
        self.queue
            .send(job)
            .await
            .map_err(|_| CommandError::Store(StoreError::WriterStopped))?;
        answer
            .await
            .map_err(|_| CommandError::Store(StoreError::WriterStopped))?
    }
}

struct Writer<A: Aggregate> {
    store: AggregateStore<A>,
    log: EventLog,
    services: A::Services,
}

/// The commands of one aggregate in one round: the aggregate as they left it, and what
/// each accepted command emitted.
/// What became of one job of a group.
enum Outcome<A: Aggregate> {
    Accepted(Job<A>, Vec<A::Event>),
    Refused(Job<A>, A::Error),
}

impl<A: Aggregate> Outcome<A> {
    fn is_refused(&self) -> bool {
        matches!(self, Self::Refused(..))
    }

    fn into_job(self) -> Job<A> {
        match self {
            Self::Accepted(job, _) | Self::Refused(job, _) => job,
        }
    }
}

struct Group<A: Aggregate> {
    loaded: LoadedAggregate<A>,
    base_sequence: usize,
    accepted: Vec<(Job<A>, Vec<A::Event>)>,
}

impl<A> Writer<A>
where
    A: Batched,
{
    async fn run(self, mut commands: mpsc::Receiver<Job<A>>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while commands.recv_many(&mut batch, MAX_BATCH).await > 0 {
            metrics::histogram!("parley_batch_commands", "aggregate" => A::TYPE)
                .record(batch.len() as f64);
            self.write(std::mem::take(&mut batch)).await;
        }
    }

    /// Carries out one batch, answering every job in it.
    async fn write(&self, mut open: Vec<Job<A>>) {
        for round in 0..MAX_ROUNDS {
            // A writer that lost the race twice (another instance keeps writing the same
            // aggregates, and its appends land while this one catches up) takes a turn to
            // write alone: it waits for the appends in flight, catches up with them and
            // appends before anyone else can. Without it, one instance could lose every
            // round to another that appends back to back.
            let turn = if round >= ALONE_AFTER_ROUNDS {
                metrics::counter!("parley_write_turns_total", "aggregate" => A::TYPE).increment(1);
                match self.log.write_turn().await {
                    Ok(turn) => Some(turn),
                    Err(error) => {
                        fail_jobs(open, &StoreError::log(error));
                        return;
                    }
                }
            } else {
                None
            };
            let groups = self.handle(std::mem::take(&mut open), turn.is_some()).await;
            let Some(groups) = self.append(groups, turn).await else {
                return;
            };
            // Collisions: what is left goes round again.
            open = groups;
            if open.is_empty() {
                return;
            }
            metrics::counter!("parley_command_conflicts_total", "aggregate" => A::TYPE)
                .increment(1);
        }
        for job in open {
            job.answer(Err(CommandError::Conflict));
        }
    }

    /// Runs every job against its aggregate, grouped by aggregate in arrival order; the
    /// aggregates are loaded concurrently (cached ones without a read).
    async fn handle(&self, jobs: Vec<Job<A>>, current: bool) -> Vec<Group<A>> {
        let mut order: Vec<String> = Vec::new();
        let mut by_aggregate: HashMap<String, Vec<Job<A>>> = HashMap::new();
        for job in jobs {
            by_aggregate
                .entry(job.aggregate_id.clone())
                .or_insert_with(|| {
                    order.push(job.aggregate_id.clone());
                    Vec::new()
                })
                .push(job);
        }
        let groups = order.into_iter().map(|id| {
            let jobs = by_aggregate.remove(&id).unwrap_or_default();
            self.handle_group(id, jobs, current)
        });
        futures::future::join_all(groups)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// `current`: catch the aggregate up with the log first (with a write turn held), else
    /// take the cached state as it is.
    async fn handle_group(
        &self,
        aggregate_id: String,
        jobs: Vec<Job<A>>,
        current: bool,
    ) -> Option<Group<A>> {
        let loaded = if current {
            self.store.load_aggregate(&aggregate_id).await
        } else {
            self.store.load_for_write(&aggregate_id).await
        };
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                fail_jobs(jobs, &StoreError::load(error));
                return None;
            }
        };
        let (loaded, outcomes) = match self.run_group(&aggregate_id, loaded, jobs).await? {
            // A refusal decided on the cached state may be wrong: another instance may have
            // changed the aggregate since (a join there, then a leave here). Accepted
            // commands need no such check (a stale cache makes their append collide), but a
            // refusal is answered without touching the store. So before refusing, catch up
            // with the log (a read of the events after the cached sequence, usually none)
            // and, if there were any, run the whole group again on the current state.
            // (A group run in a write turn was loaded current already.)
            (loaded, outcomes) if !current && outcomes.iter().any(Outcome::is_refused) => {
                let current = match self.store.load_aggregate(&aggregate_id).await {
                    Ok(current) => current,
                    Err(error) => {
                        let error = StoreError::load(error);
                        fail_jobs(outcomes.into_iter().map(Outcome::into_job), &error);
                        return None;
                    }
                };
                if current.sequence() == loaded.sequence() {
                    (loaded, outcomes)
                } else {
                    let jobs = outcomes.into_iter().map(Outcome::into_job).collect();
                    self.run_group(&aggregate_id, current, jobs).await?
                }
            }
            ran => ran,
        };
        let base_sequence = loaded.sequence();
        let mut accepted = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            match outcome {
                Outcome::Accepted(job, events) => accepted.push((job, events)),
                Outcome::Refused(job, error) => job.answer(Err(CommandError::Rejected(error))),
            }
        }
        Some(Group {
            loaded,
            base_sequence,
            accepted,
        })
    }

    /// Runs `jobs` in order against `loaded`, each on the state the ones before it left.
    /// `None` when the aggregate refused a command inconsistently (all jobs answered).
    async fn run_group(
        &self,
        aggregate_id: &str,
        mut loaded: LoadedAggregate<A>,
        jobs: Vec<Job<A>>,
    ) -> Option<(LoadedAggregate<A>, Vec<Outcome<A>>)> {
        let mut outcomes: Vec<Outcome<A>> = Vec::with_capacity(jobs.len());
        let mut jobs = jobs.into_iter();
        while let Some(job) = jobs.next() {
            let sink = EventSink::default();
            let handled = loaded
                .aggregate()
                .handle(job.command.clone(), &self.services, &sink)
                .await;
            let events = sink.collect().await;
            match handled {
                // (The sink applied the events to the working state already.)
                Ok(()) => outcomes.push(Outcome::Accepted(job, events)),
                Err(error) if events.is_empty() => outcomes.push(Outcome::Refused(job, error)),
                Err(error) => {
                    // The domain decides every event before writing any, so a refused command
                    // leaves the aggregate as it was; should that ever break, this aggregate's
                    // working state is not trusted for anything in this batch.
                    tracing::error!(
                        aggregate_type = A::TYPE,
                        aggregate_id,
                        %error,
                        "a refused command changed the aggregate; dropping its batch"
                    );
                    self.store.forget(aggregate_id);
                    let failure = || {
                        CommandError::Store(StoreError::Defect(
                            "the aggregate refused a command inconsistently",
                        ))
                    };
                    job.answer(Err(failure()));
                    for outcome in outcomes {
                        outcome.into_job().answer(Err(failure()));
                    }
                    for job in jobs {
                        job.answer(Err(failure()));
                    }
                    return None;
                }
            }
        }
        Some((loaded, outcomes))
    }

    /// Appends the events of `groups` in one transaction and answers the jobs it can.
    /// Returns the jobs to run again (after collisions), or `None` when all are answered.
    async fn append(&self, groups: Vec<Group<A>>, turn: Option<WriteTurn>) -> Option<Vec<Job<A>>> {
        // Every event with its sequence, and which group it belongs to.
        let mut envelopes: Vec<Vec<Vec<EventEnvelope<A>>>> = Vec::with_capacity(groups.len());
        let mut serialized: Vec<SerializedEvent> = Vec::new();
        let mut owner: Vec<(usize, usize)> = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            let mut sequence = group.base_sequence;
            let mut per_job = Vec::with_capacity(group.accepted.len());
            for (j, (job, events)) in group.accepted.iter().enumerate() {
                let mut envs = Vec::with_capacity(events.len());
                for event in events {
                    sequence += 1;
                    let envelope = EventEnvelope {
                        aggregate_id: group.loaded_id().to_owned(),
                        sequence,
                        payload: event.clone(),
                        metadata: job.metadata.clone(),
                    };
                    match SerializedEvent::try_from(&envelope) {
                        Ok(event) => serialized.push(event),
                        Err(error) => {
                            // Our own events always serialize; refuse the whole batch if not.
                            fail_all(groups, &StoreError::log(error));
                            return None;
                        }
                    }
                    owner.push((g, j));
                    envs.push(envelope);
                }
                per_job.push(envs);
            }
            envelopes.push(per_job);
        }
        if serialized.is_empty() {
            // Nothing to write: every accepted command was a no-op on committed state.
            answer_committed(&self.store, groups, envelopes, GlobalPosition::START).await;
            return None;
        }
        let appended = match turn {
            Some(turn) => turn.append_batch(&serialized).await,
            None => self.log.append_batch(&serialized).await,
        };
        match appended {
            Ok(first) => {
                answer_committed(&self.store, groups, envelopes, first).await;
                None
            }
            Err(AppendError::Conflict(colliding)) => {
                Some(self.resolve_collisions(groups, &owner, &colliding).await)
            }
            Err(AppendError::NotSent(error)) => {
                fail_all(groups, &StoreError::log(error));
                None
            }
            Err(AppendError::Store(error)) => {
                match self.outcome_of_failed_append(&serialized[0]).await {
                    Ok(Some(first)) => {
                        tracing::warn!(%error, "the append's connection failed after its commit");
                        answer_committed(&self.store, groups, envelopes, first).await;
                    }
                    Ok(None) => fail_all(groups, &StoreError::log(error)),
                    Err(check) => fail_all(
                        groups,
                        &StoreError::Unknown {
                            error: std::sync::Arc::new(error),
                            check: std::sync::Arc::new(check),
                        },
                    ),
                }
                None
            }
        }
    }

    /// Reloads the aggregates whose events collided. One that had not changed hit a unique
    /// key: its colliding commands are answered by [`Batched::on_unique_collision`]. Every
    /// other job goes round again (on the reloaded state, or on the cached one).
    async fn resolve_collisions(
        &self,
        groups: Vec<Group<A>>,
        owner: &[(usize, usize)],
        colliding: &[usize],
    ) -> Vec<Job<A>> {
        let mut colliding_jobs: HashMap<usize, HashSet<usize>> = HashMap::new();
        for &index in colliding {
            if let Some(&(g, j)) = owner.get(index) {
                colliding_jobs.entry(g).or_default().insert(j);
            }
        }
        let mut again = Vec::new();
        for (g, group) in groups.into_iter().enumerate() {
            let Some(jobs) = colliding_jobs.get(&g) else {
                again.extend(group.accepted.into_iter().map(|(job, _)| job));
                continue;
            };
            let id = group.loaded_id().to_owned();
            // The cached state is behind, not wrong (only committed states are cached): catch
            // it up with the events after it (one read of a few rows) rather than rebuild it
            // from the snapshot. A slow rebuild made an instance lose every race for a room
            // another instance kept writing, until its commands ran out of rounds.
            let reloaded = match self.store.load_aggregate(&id).await {
                Ok(reloaded) => reloaded,
                Err(error) => {
                    let jobs = group.accepted.into_iter().map(|(job, _)| job);
                    fail_jobs(jobs, &StoreError::load(error));
                    continue;
                }
            };
            let unchanged = reloaded.sequence() == group.base_sequence;
            for (j, (job, _)) in group.accepted.into_iter().enumerate() {
                if unchanged && jobs.contains(&j) {
                    match A::on_unique_collision(&job.command) {
                        Collision::AlreadyDone => job.answer(Ok(Committed {
                            events: Vec::new(),
                            position: GlobalPosition::START,
                        })),
                        Collision::Refused(error) => job.answer(Err(CommandError::Rejected(error))),
                    }
                } else {
                    again.push(job);
                }
            }
        }
        again
    }

    /// After a failed append: the first position of the batch if it was committed after
    /// all, `None` if it was not. Asks the log a few times while it is unreachable.
    async fn outcome_of_failed_append(
        &self,
        first_event: &SerializedEvent,
    ) -> Result<Option<GlobalPosition>, PersistenceError> {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.log.stored_position(first_event).await {
                Ok(position) => return Ok(position),
                Err(error) if attempt == 4 => return Err(error),
                Err(_) => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
            attempt += 1;
        }
    }
}

impl<A: Aggregate> Group<A> {
    fn loaded_id(&self) -> &str {
        self.loaded.aggregate_id()
    }
}

/// Caches the aggregates' new states (writing the snapshots that are due) and answers every
/// job of a committed batch.
async fn answer_committed<A: Batched>(
    store: &AggregateStore<A>,
    groups: Vec<Group<A>>,
    envelopes: Vec<Vec<Vec<EventEnvelope<A>>>>,
    first: GlobalPosition,
) {
    let mut answers = Vec::with_capacity(groups.len());
    let mut states = Vec::new();
    for (group, per_job) in groups.into_iter().zip(envelopes) {
        let appended: usize = per_job.iter().map(Vec::len).sum();
        if appended > 0 {
            states.push((group.loaded, group.base_sequence + appended));
        }
        answers.push((group.accepted, per_job));
    }
    futures::future::join_all(
        states
            .into_iter()
            .map(|(loaded, sequence)| store.commit_state(loaded, sequence)),
    )
    .await;
    // The batch's events hold positions first, first + 1, … in order.
    let mut position = first.0 - 1;
    for (accepted, per_job) in answers {
        for ((job, _), events) in accepted.into_iter().zip(per_job) {
            position += events.len() as i64;
            let at = if events.is_empty() {
                GlobalPosition::START
            } else {
                GlobalPosition(position)
            };
            job.answer(Ok(Committed {
                events,
                position: at,
            }));
        }
    }
}

fn fail_all<A: Aggregate>(groups: Vec<Group<A>>, error: &StoreError) {
    let jobs = groups
        .into_iter()
        .flat_map(|group| group.accepted.into_iter().map(|(job, _)| job));
    fail_jobs(jobs, error);
}

fn fail_jobs<A: Aggregate>(jobs: impl IntoIterator<Item = Job<A>>, error: &StoreError) {
    for job in jobs {
        job.answer(Err(CommandError::Store(error.clone())));
    }
}
