//! Parley's domain: the `User` and `Room` aggregates with their commands, events and errors.
//!
//! This crate is pure: no I/O, no database, no runtime. Everything that needs the outside
//! world (is this username taken? was this client message id used long ago?) reaches the
//! aggregates through the small service traits in [`services`], which the server implements
//! over the event store and the tests implement in memory.

pub mod ids;
pub mod room;
pub mod services;
pub mod upcasting;
pub mod user;
pub mod values;

pub use ids::{MessageId, MessageSeq, NegativeSeq, RoomId, UserId};
pub use room::{Room, RoomCommand, RoomError, RoomEvent, RoomRole, RoomVisibility};
pub use services::{MessageFacts, RoomServices, ServiceError, UserServices};
pub use upcasting::upcasters;
pub use user::{Role, User, UserCommand, UserError, UserEvent};
pub use values::{
    AnnouncementText, BanReason, ClientMsgId, Emoji, MessageBody, Password, RoomName, RoomTopic,
    Username, ValueError,
};

/// The version every event type carries today. Bump it (and add an upcaster) whenever an
/// event's stored shape changes.
pub const EVENT_VERSION: &str = "1.0";
