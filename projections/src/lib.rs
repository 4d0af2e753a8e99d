//! Parley's read side: the projector that turns the event log into read models, the read
//! models themselves, and the live feed of newly projected events.
//!
//! - [`postgres::PgProjector`] reads the Postgres log forward by [`GlobalPosition`] (given
//!   at insert, in commit order, a gap-free prefix for every reader), applies the events
//!   to the read models and moves their checkpoints in one transaction, then hands the batch
//!   to the [`LiveFeed`]. One instance projects at a time (advisory lock).
//! - [`memory::MemoryProjector`] does the same over the embedded log.
//! - [`ReadModels`] answers the queries the API needs, from either backend, including the
//!   analyst's: pages of the global log ([`EventFilter`], [`EventPage`]), rooms and history
//!   as of a position ([`RoomAt`]), and rebuilds.
//! - [`export`] streams the positioned log to JSONL or CSV (`parley events export`).

mod canonical_json;
mod changes;
pub mod erasure;
pub mod events;
pub mod export;
pub mod live;
pub mod log;
pub mod memory;
pub mod postgres;
mod read_models;
pub mod time_travel;
pub mod views;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use events::{AggregateKind, EventFilter, EventPage, FilterError};
pub use live::LiveFeed;
pub use log::{DecodedEvent, LogEvent, RawLogEvent};
pub use read_models::{ReadModelError, ReadModelStore, ReadModels};
pub use time_travel::RoomAt;
pub use views::{
    MessagePage, MessageView, PageError, PageRequest, ReactionView, RoomListItem, RoomView,
    UserView,
};

/// The projections the projector maintains, each with its own checkpoint.
pub const PROJECTIONS: [&str; 3] = ["users", "rooms", "messages"];

/// A place in the global event log: strictly increasing in commit order, never skipped, stable
/// once given. What analysts, exports, `atPosition` and subscription cursors see.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct GlobalPosition(pub i64);

impl GlobalPosition {
    /// Before the first event.
    pub const START: Self = Self(0);

    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

/// A position from outside (a client's cursor): never negative.
impl TryFrom<i64> for GlobalPosition {
    type Error = FilterError;

    fn try_from(value: i64) -> Result<Self, FilterError> {
        if value < 0 {
            Err(FilterError::NegativePosition(value))
        } else {
            Ok(Self(value))
        }
    }
}

impl fmt::Display for GlobalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How far one projection has come.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    /// The last position applied.
    pub checkpoint: GlobalPosition,
    /// Events committed but not yet applied by this projection (positioned or not).
    pub lag_events: i64,
    /// Age of the oldest event not yet applied (0 when caught up).
    pub lag_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::GlobalPosition;

    #[test]
    fn positions_count_up_from_the_start() {
        assert_eq!(GlobalPosition::START.next(), GlobalPosition(1));
        assert!(GlobalPosition(2) > GlobalPosition(1));
    }
}
