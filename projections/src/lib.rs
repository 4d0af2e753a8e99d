//! Parley's read side: the projector that turns the event log into read models, and the
//! types that name positions in that log.
//!
//! The projector (reading the log in commit order, stamping the public `position`, feeding
//! the read models with a checkpoint in the same transaction) builds on these types.

use std::fmt;

use serde::{Deserialize, Serialize};

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

impl fmt::Display for GlobalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
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
