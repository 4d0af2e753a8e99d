//! Identifier newtypes, so a room id can never be passed where a user id is expected.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUIDv7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses the textual form (any UUID format `uuid` accepts).
            pub fn parse(s: &str) -> Result<Self, uuid::Error> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identifies a user; also the `User` aggregate's id.
    UserId
);
uuid_id!(
    /// Identifies a room; also the `Room` aggregate's id.
    RoomId
);
uuid_id!(
    /// Identifies one message, stable across retries of the same `clientMsgId`.
    MessageId
);

/// A message's position within its room: contiguous 1, 2, 3… assigned by the `Room`
/// aggregate.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MessageSeq(pub u64);

impl MessageSeq {
    /// Before the first message: what a room with no message has reached, and the start of
    /// every "after this seq" range.
    pub const ZERO: Self = Self(0);
    /// The largest seq a bigint column or a GraphQL `Int` read as `i64` can carry: the open
    /// end of a "before this seq" range.
    pub const MAX: Self = Self(i64::MAX as u64);

    /// The seq that follows this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }

    /// The seq `n` after this one.
    pub fn plus(self, n: u64) -> Self {
        Self(self.0.saturating_add(n))
    }

    /// The seq before this one (`ZERO` stays `ZERO`).
    pub fn prev(self) -> Self {
        Self(self.0.saturating_sub(1))
    }

    /// As a bigint, the way SQL columns and GraphQL `Int` fields carry it. Seqs count a
    /// room's messages, so they never come near `i64::MAX`; were one above, it would read as
    /// `i64::MAX` rather than wrap.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// A seq read back from a bigint column, where seqs are stored never negative (a
    /// negative would read as `ZERO`). Input from outside goes through `TryFrom<i64>`.
    pub fn stored(value: i64) -> Self {
        Self(u64::try_from(value).unwrap_or(0))
    }

    /// How many seqs lie in `(self, to]` (0 when `to` is not past `self`).
    pub fn until(self, to: Self) -> u64 {
        to.0.saturating_sub(self.0)
    }
}

/// A negative number given where a seq was expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a seq cannot be negative (got {0})")]
pub struct NegativeSeq(pub i64);

impl TryFrom<i64> for MessageSeq {
    type Error = NegativeSeq;

    fn try_from(value: i64) -> Result<Self, NegativeSeq> {
        u64::try_from(value)
            .map(Self)
            .map_err(|_| NegativeSeq(value))
    }
}

impl fmt::Display for MessageSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The namespace of direct rooms' ids (a UUIDv5 namespace, fixed forever: changing it would
/// give every pair of users a second direct room).
const DIRECT_ROOMS: Uuid = Uuid::from_u128(0x7061_726c_6579_2d64_6972_6563_742d_726f);

impl RoomId {
    /// The id of the one direct room of two users: the same for either order, on every
    /// instance, every time (a UUIDv5 of the two ids, the smaller first), so two users
    /// opening it at once open the same aggregate and the store lets only one create it.
    pub fn direct(a: UserId, b: UserId) -> Self {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let mut name = [0u8; 32];
        name[..16].copy_from_slice(low.0.as_bytes());
        name[16..].copy_from_slice(high.0.as_bytes());
        Self(Uuid::new_v5(&DIRECT_ROOMS, &name))
    }
}
