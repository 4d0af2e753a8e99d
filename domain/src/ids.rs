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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageSeq(pub u64);

impl MessageSeq {
    /// The seq that follows this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
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
