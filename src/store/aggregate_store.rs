//! [`AggregateStore`]: cqrs-es's `EventStore` for Parley, O(1) in an aggregate's history.
//!
//! Loading: start from the cached aggregate (or the latest snapshot, or the default), read
//! only events with a higher sequence, apply them once. The cache is always a committed
//! prefix of the log, so it stays valid whatever other instances write: their events are
//! simply "newer than the cached sequence".
//!
//! Committing: the aggregate in the context already holds the new events (cqrs-es's
//! `EventSink` applied them while handling), so they are appended and the context's
//! aggregate becomes the cached state as is — never applied a second time.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cqrs_es::persist::{EventUpcaster, PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventEnvelope, EventStore};
use lru::LruCache;

use super::{AppendError, EventLog, Snapshot};

/// A snapshot is written once this many events have accrued since the last one, and after
/// any load that had to replay at least this many.
pub const SNAPSHOT_EVERY: usize = 250;

/// How many aggregates one instance keeps in memory.
const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// Loads and commits aggregates of type `A`. Clones share the cache.
pub struct AggregateStore<A: Aggregate> {
    inner: Arc<Inner<A>>,
}

struct Inner<A: Aggregate> {
    log: EventLog,
    cache: Mutex<LruCache<String, Cached<A>>>,
    upcasters: Vec<Box<dyn EventUpcaster>>,
    snapshot_every: usize,
    rows_read: AtomicU64,
}

#[derive(Clone)]
struct Cached<A> {
    aggregate: A,
    sequence: usize,
    snapshot_sequence: usize,
}

/// An aggregate as loaded for one command: its state and the sequence of its last event.
#[derive(Debug)]
pub struct LoadedAggregate<A> {
    aggregate_id: String,
    aggregate: A,
    sequence: usize,
    snapshot_sequence: usize,
}

impl<A> LoadedAggregate<A> {
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }

    /// The sequence of the last event folded into this state (0 for a new aggregate).
    pub fn sequence(&self) -> usize {
        self.sequence
    }

    pub fn state(&self) -> &A {
        &self.aggregate
    }

    pub fn into_state(self) -> A {
        self.aggregate
    }
}

impl<A: Aggregate> AggregateContext<A> for LoadedAggregate<A> {
    fn aggregate(&mut self) -> &mut A {
        &mut self.aggregate
    }
}

impl<A: Aggregate> Clone for AggregateStore<A> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<A: Aggregate> fmt::Debug for AggregateStore<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateStore")
            .field("aggregate_type", &A::TYPE)
            .field("log", &self.inner.log.kind())
            .finish_non_exhaustive()
    }
}

impl<A> AggregateStore<A>
where
    A: Aggregate + Clone,
{
    /// A store with the default cache and snapshot settings and the domain's upcasters
    /// ([`parley_domain::upcasters`], the same list the projector applies).
    pub fn new(log: EventLog) -> Self {
        Self::with_options(
            log,
            DEFAULT_CACHE_CAPACITY,
            SNAPSHOT_EVERY,
            parley_domain::upcasters(),
        )
    }

    pub fn with_options(
        log: EventLog,
        cache_capacity: usize,
        snapshot_every: usize,
        upcasters: Vec<Box<dyn EventUpcaster>>,
    ) -> Self {
        let capacity = NonZeroUsize::new(cache_capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Arc::new(Inner {
                log,
                cache: Mutex::new(LruCache::new(capacity)),
                upcasters,
                snapshot_every: snapshot_every.max(1),
                rows_read: AtomicU64::new(0),
            }),
        }
    }

    /// Event and snapshot rows this store has read from the log since it was created.
    pub fn rows_read(&self) -> u64 {
        self.inner.rows_read.load(Ordering::Relaxed)
    }

    /// Forgets every cached aggregate (as a restarted instance would).
    pub fn clear_cache(&self) {
        self.cache().clear();
    }

    /// Reads the cached state of an aggregate without loading it.
    pub fn peek<R>(&self, aggregate_id: &str, f: impl FnOnce(&A) -> R) -> Option<R> {
        self.cache().peek(aggregate_id).map(|c| f(&c.aggregate))
    }

    /// The aggregate for a batched write: the cached state as it is, with no read at all
    /// (the append detects a stale cache: its sequence collides), else loaded from the log.
    pub async fn load_for_write(
        &self,
        aggregate_id: &str,
    ) -> Result<LoadedAggregate<A>, AggregateError<A::Error>> {
        if let Some(cached) = self.cache().get(aggregate_id).cloned() {
            return Ok(LoadedAggregate {
                aggregate_id: aggregate_id.to_owned(),
                aggregate: cached.aggregate,
                sequence: cached.sequence,
                snapshot_sequence: cached.snapshot_sequence,
            });
        }
        self.load_aggregate(aggregate_id).await
    }

    /// Records a committed state (the batch writer's, after its append): it becomes the
    /// cached state unless the cache already holds a newer one, and a snapshot is written
    /// first once enough events have accrued.
    pub async fn commit_state(&self, loaded: LoadedAggregate<A>, new_sequence: usize) {
        self.committed(
            &loaded.aggregate_id,
            loaded.aggregate,
            new_sequence,
            loaded.snapshot_sequence,
        )
        .await;
    }

    async fn committed(
        &self,
        aggregate_id: &str,
        aggregate: A,
        sequence: usize,
        snapshot_sequence: usize,
    ) {
        let mut committed = Cached {
            aggregate,
            sequence,
            snapshot_sequence,
        };
        self.maybe_snapshot(aggregate_id, &mut committed).await;
        self.put_if_newer(aggregate_id, committed);
    }

    /// Caches `cached` unless a newer state of the aggregate is cached already (a reader's
    /// load may finish after a writer's commit: the cache never moves backwards).
    fn put_if_newer(&self, aggregate_id: &str, cached: Cached<A>) {
        let mut cache = self.cache();
        match cache.peek_mut(aggregate_id) {
            Some(existing) if existing.sequence > cached.sequence => {}
            Some(existing) => *existing = cached,
            None => {
                cache.put(aggregate_id.to_owned(), cached);
            }
        }
    }

    /// Drops an aggregate from the cache (after a conflict showed it stale).
    pub fn forget(&self, aggregate_id: &str) {
        self.cache().pop(aggregate_id);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<String, Cached<A>>> {
        // A panic while holding this lock cannot leave the cache half-updated (every
        // operation is a single LRU call), so a poisoned lock is still usable.
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count_rows(&self, n: usize) {
        self.inner.rows_read.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn deserialize(&self, event: SerializedEvent) -> Result<EventEnvelope<A>, PersistenceError> {
        let event = self.inner.upcasters.iter().fold(event, |event, upcaster| {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                upcaster.upcast(event)
            } else {
                event
            }
        });
        EventEnvelope::<A>::try_from(event)
    }

    /// The starting point for a load: cache, else snapshot, else the empty aggregate.
    /// Also says whether it came from the cache.
    async fn starting_point(
        &self,
        aggregate_id: &str,
    ) -> Result<(Cached<A>, bool), PersistenceError> {
        if let Some(cached) = self.cache().get(aggregate_id).cloned() {
            return Ok((cached, true));
        }
        self.stored_starting_point(aggregate_id)
            .await
            .map(|start| (start, false))
    }

    async fn stored_starting_point(
        &self,
        aggregate_id: &str,
    ) -> Result<Cached<A>, PersistenceError> {
        let Some(snapshot) = self.inner.log.snapshot(A::TYPE, aggregate_id).await? else {
            return Ok(Cached {
                aggregate: A::default(),
                sequence: 0,
                snapshot_sequence: 0,
            });
        };
        self.count_rows(1);
        match serde_json::from_value::<A>(snapshot.state) {
            Ok(aggregate) => Ok(Cached {
                aggregate,
                sequence: snapshot.last_sequence,
                snapshot_sequence: snapshot.last_sequence,
            }),
            Err(error) => {
                // A snapshot from an older state layout: replay from the start instead,
                // and the next snapshot replaces it.
                tracing::warn!(
                    aggregate_type = A::TYPE,
                    aggregate_id,
                    %error,
                    "ignoring unreadable snapshot"
                );
                Ok(Cached {
                    aggregate: A::default(),
                    sequence: 0,
                    snapshot_sequence: 0,
                })
            }
        }
    }

    async fn maybe_snapshot(&self, aggregate_id: &str, cached: &mut Cached<A>) {
        if cached.sequence < cached.snapshot_sequence + self.inner.snapshot_every {
            return;
        }
        let state = match serde_json::to_value(&cached.aggregate) {
            Ok(state) => state,
            Err(error) => {
                tracing::error!(aggregate_type = A::TYPE, aggregate_id, %error, "cannot serialize snapshot");
                return;
            }
        };
        let snapshot = Snapshot {
            state,
            last_sequence: cached.sequence,
        };
        // A failed snapshot costs only a longer replay later; the command has succeeded.
        match self
            .inner
            .log
            .save_snapshot(A::TYPE, aggregate_id, snapshot)
            .await
        {
            Ok(()) => cached.snapshot_sequence = cached.sequence,
            Err(error) => {
                tracing::warn!(aggregate_type = A::TYPE, aggregate_id, %error, "snapshot not saved")
            }
        }
    }
}

impl<A> EventStore<A> for AggregateStore<A>
where
    A: Aggregate + Clone,
{
    type AC = LoadedAggregate<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let events = self.inner.log.events_after::<A>(aggregate_id, 0).await?;
        self.count_rows(events.len());
        Ok(events
            .into_iter()
            .map(|e| self.deserialize(e))
            .collect::<Result<_, _>>()?)
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<LoadedAggregate<A>, AggregateError<A::Error>> {
        let (mut start, from_cache) = self.starting_point(aggregate_id).await?;
        let newer = self
            .inner
            .log
            .events_after::<A>(aggregate_id, start.sequence)
            .await?;
        self.count_rows(newer.len());
        let replayed = newer.len();
        for event in newer {
            let envelope = self.deserialize(event)?;
            start.sequence = envelope.sequence;
            start.aggregate.apply(envelope.payload);
        }
        if replayed > 0 {
            self.maybe_snapshot(aggregate_id, &mut start).await;
        }
        // Only aggregates that exist are cached: a stream of commands to made-up ids must
        // not push real rooms out of the cache.
        if (replayed > 0 || !from_cache) && start.sequence > 0 {
            self.put_if_newer(aggregate_id, start.clone());
        }
        Ok(LoadedAggregate {
            aggregate_id: aggregate_id.to_owned(),
            aggregate: start.aggregate,
            sequence: start.sequence,
            snapshot_sequence: start.snapshot_sequence,
        })
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: LoadedAggregate<A>,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let LoadedAggregate {
            aggregate_id,
            aggregate,
            sequence,
            snapshot_sequence,
        } = context;
        let envelopes: Vec<EventEnvelope<A>> = events
            .into_iter()
            .zip(sequence + 1..)
            .map(|(payload, sequence)| EventEnvelope {
                aggregate_id: aggregate_id.clone(),
                sequence,
                payload,
                metadata: metadata.clone(),
            })
            .collect();
        let serialized = envelopes
            .iter()
            .map(SerializedEvent::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        self.inner
            .log
            .append_batch(&serialized)
            .await
            .map_err(|error| match error {
                AppendError::Conflict(_) => AggregateError::AggregateConflict,
                AppendError::NotSent(error) | AppendError::Store(error) => {
                    AggregateError::from(error)
                }
            })?;
        self.committed(
            &aggregate_id,
            aggregate,
            sequence + envelopes.len(),
            snapshot_sequence,
        )
        .await;
        Ok(envelopes)
    }
}
