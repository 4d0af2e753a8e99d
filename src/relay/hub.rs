//! The local fan-out shared by both relay backends: one bounded broadcast buffer per channel
//! with at least one local subscriber, reference counted, plus (for Redis) the bookkeeping
//! that tells the link task which channels to SUBSCRIBE or UNSUBSCRIBE.
//!
//! Everything here is synchronous and holds its lock only for map updates and non-blocking
//! sends, so it can be called from the Redis push callback, from `Drop` and from async code.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::Relayed;
use tokio::sync::{broadcast, oneshot, Notify};

/// What travels through a channel's local buffer.
#[derive(Clone, Debug)]
pub(crate) enum Item {
    Message(Relayed),
    Resync,
}

/// Where a channel stands in Redis, from this instance's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RedisState {
    /// Not subscribed in Redis (never was, or the connection was lost).
    NotSubscribed,
    /// A SUBSCRIBE is in flight.
    Subscribing,
    /// Subscribed and confirmed by Redis (always so for the in-process relay).
    Subscribed,
    /// An UNSUBSCRIBE is in flight.
    Unsubscribing,
}

#[derive(Debug)]
struct Entry {
    tx: broadcast::Sender<Item>,
    /// Live local `Subscription`s.
    refs: usize,
    state: RedisState,
    /// `subscribe()` calls waiting for the Redis confirmation.
    waiters: Vec<oneshot::Sender<()>>,
    /// The connection was lost while this channel had subscribers: they get `Resync` as soon
    /// as the channel is subscribed again (before any newer message).
    resync_pending: bool,
}

#[derive(Debug, Default)]
struct HubState {
    channels: HashMap<String, Entry>,
    /// Bumped on every lost Redis connection; a SUBSCRIBE that was in flight across a bump
    /// proves nothing about the new connection.
    epoch: u64,
    /// The last Redis error seen by the link task, for error messages.
    last_error: Option<String>,
}

/// Counters, all monotonic. Read through [`super::RelayStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub published: AtomicU64,
    pub publish_errors: AtomicU64,
    pub publish_commands: AtomicU64,
    pub subscribe_commands: AtomicU64,
    pub unsubscribe_commands: AtomicU64,
    pub received: AtomicU64,
    pub deliveries: AtomicU64,
    pub disconnects: AtomicU64,
    pub resyncs: AtomicU64,
    pub lagged: AtomicU64,
    pub malformed: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The SUBSCRIBE / UNSUBSCRIBE work the link task must do next.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub epoch: u64,
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.subscribe.is_empty() && self.unsubscribe.is_empty()
    }
}

/// What [`Hub::join`] hands back.
pub(crate) struct Joined {
    pub rx: broadcast::Receiver<Item>,
    /// `Some` when the caller must wait for the Redis confirmation.
    pub ready: Option<oneshot::Receiver<()>>,
}

/// Local fan-out and subscription bookkeeping.
#[derive(Debug)]
pub(crate) struct Hub {
    capacity: usize,
    /// `false` for the in-process relay: channels are usable at once and vanish with their
    /// last subscriber.
    uses_redis: bool,
    state: Mutex<HubState>,
    /// Wakes the Redis link task.
    pub(crate) wake: Notify,
    pub(crate) counters: Counters,
}

impl Hub {
    pub(crate) fn new(capacity: usize, uses_redis: bool) -> Self {
        Self {
            capacity: capacity.max(1),
            uses_redis,
            state: Mutex::new(HubState::default()),
            wake: Notify::new(),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // Nothing under this lock can leave the state half-updated; a poisoned lock (a panic
        // elsewhere) is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one local subscriber to `name`.
    pub(crate) fn join(&self, name: &str) -> Joined {
        let mut state = self.lock();
        let uses_redis = self.uses_redis;
        let entry = state
            .channels
            .entry(name.to_owned())
            .or_insert_with(|| Entry {
                tx: broadcast::channel(self.capacity).0,
                refs: 0,
                state: if uses_redis {
                    RedisState::NotSubscribed
                } else {
                    RedisState::Subscribed
                },
                waiters: Vec::new(),
                resync_pending: false,
            });
        entry.refs += 1;
        let rx = entry.tx.subscribe();
        if entry.state == RedisState::Subscribed {
            return Joined { rx, ready: None };
        }
        let (tx, ready) = oneshot::channel();
        entry.waiters.push(tx);
        drop(state);
        self.wake.notify_one();
        Joined {
            rx,
            ready: Some(ready),
        }
    }

    /// Removes one local subscriber from `name` (a `Subscription` was dropped).
    pub(crate) fn leave(&self, name: &str) {
        let mut state = self.lock();
        let Some(entry) = state.channels.get_mut(name) else {
            return;
        };
        entry.refs = entry.refs.saturating_sub(1);
        if entry.refs > 0 {
            return;
        }
        if self.uses_redis {
            drop(state);
            self.wake.notify_one();
        } else {
            state.channels.remove(name);
        }
    }

    /// Hands a message to the local subscribers of `name`, if any.
    pub(crate) fn dispatch(&self, name: &str, payload: Relayed) {
        Counters::add(&self.counters.received, 1);
        let mut state = self.lock();
        let Some(entry) = state.channels.get_mut(name) else {
            return;
        };
        if entry.resync_pending {
            // The first message through a re-established subscription: everything from here
            // on is delivered, so this is the point to re-sync from.
            entry.resync_pending = false;
            self.send_resync(&entry.tx);
        }
        // Counted before sending, so a subscriber that got the message sees it counted.
        let receivers = entry.tx.receiver_count() as u64;
        Counters::add(&self.counters.deliveries, receivers);
        let _ = entry.tx.send(Item::Message(payload));
    }

    fn send_resync(&self, tx: &broadcast::Sender<Item>) {
        if tx.receiver_count() > 0 {
            Counters::add(&self.counters.resyncs, 1);
            let _ = tx.send(Item::Resync);
        }
    }

    /// The Redis connection was lost: every subscription in Redis is gone with it.
    pub(crate) fn disconnected(&self) {
        Counters::add(&self.counters.disconnects, 1);
        let mut state = self.lock();
        state.epoch += 1;
        for entry in state.channels.values_mut() {
            entry.state = RedisState::NotSubscribed;
            entry.resync_pending = entry.refs > 0;
        }
        drop(state);
        self.wake.notify_one();
    }

    /// How many channels Redis has confirmed for the current connection epoch, or `None`
    /// while any subscription change is wanted or in flight (then a count proves nothing).
    pub(crate) fn settled_subscriptions(&self) -> Option<(u64, usize)> {
        let state = self.lock();
        let mut subscribed = 0;
        for entry in state.channels.values() {
            match (entry.refs > 0, entry.state) {
                (true, RedisState::Subscribed) => subscribed += 1,
                (false, RedisState::NotSubscribed) => {}
                _ => return None,
            }
        }
        Some((state.epoch, subscribed))
    }

    /// Live local subscriptions of channel `name`.
    pub(crate) fn subscribers(&self, name: &str) -> usize {
        self.lock().channels.get(name).map_or(0, |entry| entry.refs)
    }

    /// Channel names with at least one local subscriber, sorted.
    pub(crate) fn active_channels(&self) -> Vec<String> {
        let state = self.lock();
        let mut names: Vec<String> = state
            .channels
            .iter()
            .filter(|(_, entry)| entry.refs > 0)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// Takes the next batch of Redis work, marking it in flight.
    pub(crate) fn plan(&self) -> Plan {
        let mut state = self.lock();
        let mut plan = Plan {
            epoch: state.epoch,
            ..Plan::default()
        };
        state
            .channels
            .retain(|_, entry| entry.refs > 0 || entry.state != RedisState::NotSubscribed);
        for (name, entry) in state.channels.iter_mut() {
            match (entry.refs > 0, entry.state) {
                (true, RedisState::NotSubscribed) => {
                    entry.state = RedisState::Subscribing;
                    plan.subscribe.push(name.clone());
                }
                (false, RedisState::Subscribed) => {
                    entry.state = RedisState::Unsubscribing;
                    plan.unsubscribe.push(name.clone());
                }
                _ => {}
            }
        }
        plan
    }

    /// Records the outcome of a [`Plan`].
    pub(crate) fn complete(&self, plan: &Plan, outcome: Result<(), String>) {
        let mut state = self.lock();
        let same_connection = state.epoch == plan.epoch;
        match outcome {
            Ok(()) => {
                state.last_error = None;
                for name in &plan.subscribe {
                    let Some(entry) = state.channels.get_mut(name) else {
                        continue;
                    };
                    // After a lost connection the entry was reset already; it will be
                    // subscribed again on the new connection.
                    if entry.state == RedisState::Subscribing && same_connection {
                        entry.state = RedisState::Subscribed;
                        for waiter in entry.waiters.drain(..) {
                            let _ = waiter.send(());
                        }
                    }
                }
                for name in &plan.unsubscribe {
                    let Some(entry) = state.channels.get(name) else {
                        continue;
                    };
                    if entry.state != RedisState::Unsubscribing {
                        continue;
                    }
                    if entry.refs == 0 {
                        state.channels.remove(name);
                    } else if let Some(entry) = state.channels.get_mut(name) {
                        // Someone subscribed while the UNSUBSCRIBE was in flight.
                        entry.state = RedisState::NotSubscribed;
                    }
                }
                if same_connection {
                    for entry in state.channels.values_mut() {
                        if entry.resync_pending && entry.state == RedisState::Subscribed {
                            entry.resync_pending = false;
                            self.send_resync(&entry.tx);
                        }
                    }
                }
            }
            Err(error) => {
                state.last_error = Some(error);
                // Unknown outcome: go back to the previous state; SUBSCRIBE and UNSUBSCRIBE
                // are idempotent, so the next round simply repeats them.
                for name in &plan.subscribe {
                    if let Some(entry) = state.channels.get_mut(name) {
                        if entry.state == RedisState::Subscribing {
                            entry.state = RedisState::NotSubscribed;
                        }
                    }
                }
                for name in &plan.unsubscribe {
                    if let Some(entry) = state.channels.get_mut(name) {
                        if entry.state == RedisState::Unsubscribing {
                            entry.state = RedisState::Subscribed;
                        }
                    }
                }
            }
        }
    }
}
