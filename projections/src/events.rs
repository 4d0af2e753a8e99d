//! The global log as analysts query it: which events (an [`EventFilter`]) and how many at a
//! time (an [`EventPage`]). Shared by `parley events export`, the GraphQL `events` query and
//! both stores, so the same filter means the same events everywhere.

use std::fmt;
use std::str::FromStr;

use crate::log::LogEvent;
use crate::GlobalPosition;

/// The aggregate types the log holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AggregateKind {
    User,
    Room,
}

impl AggregateKind {
    /// The name stored in the log's `aggregate_type` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "User",
            Self::Room => "Room",
        }
    }
}

impl fmt::Display for AggregateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AggregateKind {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "User" => Ok(Self::User),
            "Room" => Ok(Self::Room),
            other => Err(FilterError::UnknownAggregateType(other.to_owned())),
        }
    }
}

/// Every event type the log can hold today (the `event_type` column).
pub const EVENT_TYPES: [&str; 20] = [
    "UserRegistered",
    "RoleGranted",
    "AnnouncementMade",
    "UserErased",
    "UserBlocked",
    "UserUnblocked",
    "RoomCreated",
    "RoomUpdated",
    "MemberInvited",
    "MemberJoined",
    "MemberLeft",
    "MemberRoleChanged",
    "MemberKicked",
    "MemberBanned",
    "MemberUnbanned",
    "MessageSent",
    "MessageEdited",
    "MessageDeleted",
    "ReactionAdded",
    "ReactionRemoved",
];

/// Why a filter or page request was refused. Each is the caller's mistake, not the store's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("positions must not be negative (got {0})")]
    NegativePosition(i64),
    #[error("the position range is inverted: from {from} is after to {to}")]
    InvertedRange { from: i64, to: i64 },
    #[error("unknown aggregate type {0:?} (expected User or Room)")]
    UnknownAggregateType(String),
    #[error("unknown event type {0:?} (expected one of: {list})", list = EVENT_TYPES.join(", "))]
    UnknownEventType(String),
    #[error("an aggregate id must not be empty")]
    EmptyAggregateId,
    #[error("page size must be between 1 and {max}, got {got}")]
    PageSize { max: i64, got: i64 },
}

/// Which events of the log: all of them by default. Built by [`EventFilter::parse`], so a
/// filter that exists is valid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    from: Option<GlobalPosition>,
    to: Option<GlobalPosition>,
    aggregate_type: Option<AggregateKind>,
    aggregate_id: Option<String>,
    event_types: Vec<String>,
}

impl EventFilter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Validates the parts of a filter: `from`/`to` are inclusive positions (not negative,
    /// `from <= to`), the aggregate type is `User` or `Room`, event types are known ones
    /// (any of them matches; none given means every type).
    pub fn parse(
        from: Option<i64>,
        to: Option<i64>,
        aggregate_type: Option<&str>,
        aggregate_id: Option<&str>,
        event_types: &[String],
    ) -> Result<Self, FilterError> {
        for position in [from, to].into_iter().flatten() {
            if position < 0 {
                return Err(FilterError::NegativePosition(position));
            }
        }
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                return Err(FilterError::InvertedRange { from, to });
            }
        }
        let aggregate_type = aggregate_type.map(str::parse).transpose()?;
        if aggregate_id.is_some_and(str::is_empty) {
            return Err(FilterError::EmptyAggregateId);
        }
        let mut types = Vec::new();
        for event_type in event_types {
            if !EVENT_TYPES.contains(&event_type.as_str()) {
                return Err(FilterError::UnknownEventType(event_type.clone()));
            }
            if !types.contains(event_type) {
                types.push(event_type.clone());
            }
        }
        // A stable order, so equal filters are equal values (and equal SQL).
        types.sort();
        Ok(Self {
            from: from.map(GlobalPosition),
            to: to.map(GlobalPosition),
            aggregate_type,
            aggregate_id: aggregate_id.map(str::to_owned),
            event_types: types,
        })
    }

    /// The first position included, if bounded.
    pub fn from(&self) -> Option<GlobalPosition> {
        self.from
    }

    /// The last position included, if bounded.
    pub fn to(&self) -> Option<GlobalPosition> {
        self.to
    }

    pub fn aggregate_type(&self) -> Option<AggregateKind> {
        self.aggregate_type
    }

    pub fn aggregate_id(&self) -> Option<&str> {
        self.aggregate_id.as_deref()
    }

    /// The event types matched (empty: all), sorted.
    pub fn event_types(&self) -> &[String] {
        &self.event_types
    }

    /// The same filter with its upper bound lowered to `head` (positions beyond it do not
    /// exist yet). Exports pin their range this way when they start, so events committed
    /// meanwhile never make an export longer than the log was.
    pub fn capped_at(&self, head: GlobalPosition) -> Self {
        let to = self.to.map_or(head, |to| to.min(head));
        Self {
            to: Some(to),
            ..self.clone()
        }
    }

    /// The same filter, restricted to one aggregate type.
    pub(crate) fn with_aggregate_type(&self, kind: AggregateKind) -> Self {
        Self {
            aggregate_type: Some(kind),
            ..self.clone()
        }
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &LogEvent) -> bool {
        self.from.is_none_or(|from| event.position >= from)
            && self.to.is_none_or(|to| event.position <= to)
            && self
                .aggregate_type
                .is_none_or(|kind| event.aggregate_type == kind.as_str())
            && self
                .aggregate_id
                .as_deref()
                .is_none_or(|id| event.aggregate_id == id)
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
    }
}

/// A page of the log for the `events` query: positioned events in position order, secrets
/// redacted.
#[derive(Clone, Debug, PartialEq)]
pub struct EventPage {
    pub events: Vec<LogEvent>,
    /// More matching events exist after the last one (as of this read).
    pub has_more: bool,
}

impl EventPage {
    /// Events per page when the caller does not say.
    pub const DEFAULT_SIZE: i64 = 100;
    /// The most events one page may hold.
    pub const MAX_SIZE: i64 = 1000;

    /// Validates `after` (an exclusive position, default 0) and `first` (page size, default
    /// [`Self::DEFAULT_SIZE`], at most [`Self::MAX_SIZE`]).
    pub fn request(
        after: Option<i64>,
        first: Option<i64>,
    ) -> Result<(GlobalPosition, i64), FilterError> {
        let after = after.unwrap_or(0);
        if after < 0 {
            return Err(FilterError::NegativePosition(after));
        }
        let first = first.unwrap_or(Self::DEFAULT_SIZE);
        if !(1..=Self::MAX_SIZE).contains(&first) {
            return Err(FilterError::PageSize {
                max: Self::MAX_SIZE,
                got: first,
            });
        }
        Ok((GlobalPosition(after), first))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use cqrs_es::DomainEvent;
    use parley_domain::{
        ClientMsgId, Emoji, MessageBody, MessageId, MessageSeq, Role, RoomEvent, RoomId, RoomName,
        RoomRole, RoomVisibility, UserEvent, UserId, Username,
    };
    use serde_json::json;

    use super::*;

    #[test]
    fn every_domain_event_type_is_known_to_filters() {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let user = UserId::new();
        let room_events = [
            RoomEvent::RoomCreated {
                room_id: RoomId::new(),
                name: RoomName::parse("r").expect("valid"),
                host: user,
                created_at: now,
                visibility: RoomVisibility::Private,
                peer: None,
            },
            RoomEvent::RoomUpdated {
                updated_by: user,
                name: None,
                topic: None,
            },
            RoomEvent::MemberInvited {
                user_id: user,
                invited_by: user,
            },
            RoomEvent::MemberJoined { user_id: user },
            RoomEvent::MemberLeft { user_id: user },
            RoomEvent::MemberRoleChanged {
                user_id: user,
                role: RoomRole::Moderator,
                changed_by: user,
            },
            RoomEvent::MemberKicked {
                user_id: user,
                kicked_by: user,
            },
            RoomEvent::MemberBanned {
                user_id: user,
                banned_by: user,
                reason: None,
            },
            RoomEvent::MemberUnbanned {
                user_id: user,
                unbanned_by: user,
            },
            RoomEvent::MessageSent {
                message_id: MessageId::new(),
                seq: MessageSeq(1),
                sender: user,
                body: MessageBody::parse("b").expect("valid"),
                client_msg_id: ClientMsgId::parse("c").expect("valid"),
                sent_at: now,
                reply_to: None,
            },
            RoomEvent::MessageEdited {
                seq: MessageSeq(1),
                editor: user,
                body: MessageBody::parse("b2").expect("valid"),
                edited_at: now,
            },
            RoomEvent::MessageDeleted {
                seq: MessageSeq(1),
                deleted_by: user,
                deleted_at: now,
            },
            RoomEvent::ReactionAdded {
                seq: MessageSeq(1),
                user_id: user,
                emoji: Emoji::parse("👍").expect("valid"),
            },
            RoomEvent::ReactionRemoved {
                seq: MessageSeq(1),
                user_id: user,
                emoji: Emoji::parse("👍").expect("valid"),
            },
        ];
        let user_events = [
            UserEvent::UserRegistered {
                user_id: user,
                username: Username::parse("ann").expect("valid"),
                password_hash: "h".to_owned(),
                registered_at: now,
            },
            UserEvent::RoleGranted {
                role: Role::Analyst,
            },
            UserEvent::AnnouncementMade {
                text: parley_domain::AnnouncementText::parse("hello").expect("valid"),
                made_at: now,
            },
            UserEvent::UserErased {
                erased_by: None,
                erased_at: now,
            },
            UserEvent::UserBlocked { user_id: user },
            UserEvent::UserUnblocked { user_id: user },
        ];
        let mut names: Vec<String> = room_events
            .iter()
            .map(DomainEvent::event_type)
            .chain(user_events.iter().map(DomainEvent::event_type))
            .collect();
        names.sort();
        let mut known: Vec<String> = EVENT_TYPES.iter().map(|s| (*s).to_owned()).collect();
        known.sort();
        assert_eq!(names, known);
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        assert_eq!(
            EventFilter::parse(Some(-1), None, None, None, &[]),
            Err(FilterError::NegativePosition(-1))
        );
        assert_eq!(
            EventFilter::parse(Some(5), Some(4), None, None, &[]),
            Err(FilterError::InvertedRange { from: 5, to: 4 })
        );
        assert_eq!(
            EventFilter::parse(None, None, Some("Order"), None, &[]),
            Err(FilterError::UnknownAggregateType("Order".to_owned()))
        );
        assert_eq!(
            EventFilter::parse(None, None, None, None, &["MessageSend".to_owned()]),
            Err(FilterError::UnknownEventType("MessageSend".to_owned()))
        );
        assert!(EventFilter::parse(Some(4), Some(4), Some("Room"), Some("x"), &[]).is_ok());
    }

    #[test]
    fn a_filter_matches_on_every_criterion() {
        let event = LogEvent {
            position: GlobalPosition(10),
            aggregate_type: "Room".to_owned(),
            aggregate_id: "r1".to_owned(),
            sequence: 1,
            event_type: "MessageSent".to_owned(),
            event_version: "1.0".to_owned(),
            payload: json!({}),
            metadata: json!({}),
            recorded_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        let types = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let yes = EventFilter::parse(
            Some(10),
            Some(10),
            Some("Room"),
            Some("r1"),
            &types(&["MemberJoined", "MessageSent"]),
        )
        .expect("valid");
        assert!(yes.matches(&event));
        for no in [
            EventFilter::parse(Some(11), None, None, None, &[]),
            EventFilter::parse(None, Some(9), None, None, &[]),
            EventFilter::parse(None, None, Some("User"), None, &[]),
            EventFilter::parse(None, None, None, Some("r2"), &[]),
            EventFilter::parse(None, None, None, None, &types(&["MemberLeft"])),
        ] {
            assert!(!no.expect("valid").matches(&event));
        }
        assert_eq!(
            EventFilter::all().capped_at(GlobalPosition(5)).to(),
            Some(GlobalPosition(5))
        );
        assert_eq!(
            yes.capped_at(GlobalPosition(50)).to(),
            Some(GlobalPosition(10))
        );
    }

    #[test]
    fn page_requests_are_bounded() {
        assert_eq!(EventPage::request(None, None), Ok((GlobalPosition(0), 100)));
        assert_eq!(
            EventPage::request(None, Some(1001)),
            Err(FilterError::PageSize {
                max: 1000,
                got: 1001
            })
        );
        assert_eq!(
            EventPage::request(Some(-3), None),
            Err(FilterError::NegativePosition(-3))
        );
    }
}
