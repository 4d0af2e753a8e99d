//! Events as the read side sees them: positioned, with their stored metadata, decoded into
//! the domain's event types.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use parley_domain::{RoomEvent, RoomId, UserEvent, UserId};
use serde::Deserialize;
use serde_json::Value;

use crate::GlobalPosition;

/// One event of the global log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEvent {
    pub position: GlobalPosition,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

/// A log event in the domain's terms.
#[derive(Clone, Debug, PartialEq)]
pub enum DecodedEvent {
    Room(RoomId, RoomEvent),
    User(UserId, UserEvent),
    /// An aggregate or event this version does not know (skipped by projections, kept in
    /// the log and exports).
    Unknown,
}

impl LogEvent {
    /// Decodes the payload. An event that does not decode is reported as `Unknown` and
    /// logged: a projection must not stop the whole log on one unreadable row.
    pub fn decode(&self) -> DecodedEvent {
        let decoded = match self.aggregate_type.as_str() {
            "Room" => RoomId::parse(&self.aggregate_id).ok().and_then(|id| {
                RoomEvent::deserialize(&self.payload)
                    .ok()
                    .map(|e| DecodedEvent::Room(id, e))
            }),
            "User" => UserId::parse(&self.aggregate_id).ok().and_then(|id| {
                UserEvent::deserialize(&self.payload)
                    .ok()
                    .map(|e| DecodedEvent::User(id, e))
            }),
            _ => None,
        };
        decoded.unwrap_or_else(|| {
            tracing::warn!(
                position = self.position.0,
                aggregate_type = %self.aggregate_type,
                event_type = %self.event_type,
                "event cannot be decoded; projections skip it"
            );
            DecodedEvent::Unknown
        })
    }
}

/// A committed batch as handed to the live feed: events with their decoded form.
pub type LiveBatch = Arc<Vec<(LogEvent, DecodedEvent)>>;
