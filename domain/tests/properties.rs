//! Property tests: seq contiguity, idempotency, event serde and snapshot round trips.
//!
//! The command-driven properties run the aggregate directly, the way the framework does:
//! `handle` on the live state with a fresh `EventSink`, keeping the emitted events as
//! history. A final replay of that history must rebuild the very same state.

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use parley_domain::room::IDEMPOTENCY_WINDOW;
use parley_domain::{
    BanReason, ClientMsgId, MessageBody, MessageId, MessageSeq, Role, Room, RoomCommand, RoomError,
    RoomEvent, RoomName, RoomRole, RoomServices, RoomVisibility, User, UserEvent, UserId, Username,
    ValueError, EVENT_VERSION,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use support::*;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Driving a room
// ---------------------------------------------------------------------------------------------

/// A room plus everything around it: the history it emitted and a directory over that history.
struct Driver {
    runtime: tokio::runtime::Runtime,
    room: Room,
    directory: Arc<RecordingDirectory>,
    services: Arc<dyn RoomServices>,
    history: Vec<RoomEvent>,
    /// Whether the event store's unique key on (room, sender, clientMsgId) is modelled (a
    /// refused message leaves the room as it was, and the command is answered with the
    /// original), or the room alone is tested.
    store_keys: bool,
}

impl Driver {
    /// `ROOM`, created by `host`, with a directory that remembers every message ever sent
    /// and the event store's unique key on it.
    fn new(host: UserId) -> Self {
        let directory = Arc::new(RecordingDirectory::default());
        let mut driver = Self::with_services(host, directory.clone(), directory);
        driver.store_keys = true;
        driver
    }

    /// `ROOM`, created by `host`, with `services` answering the lookups.
    fn with_services(
        host: UserId,
        directory: Arc<RecordingDirectory>,
        services: Arc<dyn RoomServices>,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        let created = room_created(ROOM, host);
        let mut room = Room::default();
        room.apply(created.clone());
        Self {
            runtime,
            room,
            directory,
            services,
            history: vec![created],
            store_keys: false,
        }
    }

    fn execute(&mut self, command: RoomCommand) -> Result<Vec<RoomEvent>, RoomError> {
        let Self {
            runtime,
            room,
            services,
            ..
        } = self;
        let before = room.clone();
        let result = runtime.block_on(async {
            let sink = EventSink::<Room>::default();
            room.handle(command, services, &sink).await?;
            Ok(sink.collect().await)
        });
        if let Ok(events) = &result {
            let refused_by_store = self.store_keys
                && events.iter().any(|event| match event {
                    RoomEvent::MessageSent {
                        sender,
                        client_msg_id,
                        ..
                    } => self.directory.used(ROOM, *sender, client_msg_id),
                    _ => false,
                });
            if refused_by_store {
                self.room = before;
                return Ok(Vec::new());
            }
            self.directory.record(ROOM, events);
            self.history.extend(events.iter().cloned());
        }
        result
    }

    fn message_seqs(&self) -> Vec<u64> {
        self.history
            .iter()
            .filter_map(|event| match event {
                RoomEvent::MessageSent { seq, .. } => Some(seq.0),
                _ => None,
            })
            .collect()
    }

    /// The state rebuilt from history equals the live state: no command changed state
    /// without an event, and no failed command left a trace.
    fn assert_replay_matches(&self) -> Result<(), TestCaseError> {
        let mut replayed = Room::default();
        for event in self.history.iter().cloned() {
            replayed.apply(event);
        }
        prop_assert_eq!(&replayed, &self.room);
        Ok(())
    }
}

fn send_numbered(index: usize, sender: UserId, text: &str, client_id: &str) -> RoomCommand {
    RoomCommand::SendMessage {
        message_id: message_id(index as u64),
        sender,
        body: text.to_owned(),
        client_msg_id: client_id.to_owned(),
        reply_to: None,
        sent_at: now(),
    }
}

fn expected_message(index: usize, seq: u64, sender: UserId, text: &str, id: &str) -> RoomEvent {
    RoomEvent::MessageSent {
        message_id: message_id(index as u64),
        seq: MessageSeq(seq),
        sender,
        body: body(text),
        client_msg_id: client_msg_id(id),
        sent_at: now(),
        reply_to: None,
    }
}

/// The few users of the command-driven properties; user 0 hosts.
const CAST: u8 = 4;

fn cast(n: u8) -> UserId {
    user(u32::from(n))
}

/// Which `clientMsgId` a send uses.
#[derive(Clone, Debug)]
enum Key {
    /// One never used before.
    Fresh,
    /// One of a few well-worn ids, repeated often while still in the window.
    Familiar(u8),
    /// Exactly the (sender, clientMsgId) of an earlier send, picked uniformly over the whole
    /// history, so in long histories it has often fallen out of the window.
    Repeat(prop::sample::Index),
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        4 => Just(Key::Fresh),
        1 => (0..8u8).prop_map(Key::Familiar),
        2 => any::<prop::sample::Index>().prop_map(Key::Repeat),
    ]
}

/// The sends attempted so far, to resolve `Key`s against.
#[derive(Default)]
struct Attempts(Vec<(u8, String)>);

impl Attempts {
    /// The (sender, clientMsgId) that send number `index` by `user` with `key` uses.
    fn resolve(&mut self, index: usize, user: u8, key: &Key) -> (u8, String) {
        let chosen = match key {
            Key::Repeat(pick) if !self.0.is_empty() => self.0[pick.index(self.0.len())].clone(),
            Key::Familiar(n) => (user, format!("k-{n}")),
            Key::Fresh | Key::Repeat(_) => (user, format!("f-{index}")),
        };
        self.0.push(chosen.clone());
        chosen
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// A valid message.
    Send {
        user: u8,
        key: Key,
    },
    /// A whitespace-only message.
    SendBlank {
        user: u8,
    },
    Join {
        user: u8,
    },
    Leave {
        user: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..CAST, key()).prop_map(|(user, key)| Op::Send { user, key }),
        1 => (0..CAST).prop_map(|user| Op::SendBlank { user }),
        2 => (0..CAST).prop_map(|user| Op::Join { user }),
        1 => (0..CAST).prop_map(|user| Op::Leave { user }),
    ]
}

// ---------------------------------------------------------------------------------------------
// (1) seq contiguity, (2) idempotency
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever mix of sends, repeats, joins and leaves, the emitted seqs are exactly 1..=n,
    /// and every command's outcome is the one a straightforward model predicts.
    #[test]
    fn message_seqs_are_contiguous_from_one_over_any_history(
        ops in prop::collection::vec(op(), 0..800)
    ) {
        let mut driver = Driver::new(cast(0));
        let mut attempts = Attempts::default();
        let mut members: BTreeSet<u8> = BTreeSet::from([0]);
        let mut sent: HashSet<(u8, String)> = HashSet::new();

        for (index, op) in ops.into_iter().enumerate() {
            match op {
                Op::Send { user, key } => {
                    let (user, id) = attempts.resolve(index, user, &key);
                    let outcome = driver.execute(send_numbered(index, cast(user), "hi", &id));
                    if !members.contains(&user) {
                        prop_assert_eq!(outcome, Err(RoomError::NotMember));
                    } else if !sent.insert((user, id.clone())) {
                        prop_assert_eq!(outcome, Ok(vec![]));
                    } else {
                        let seq = sent.len() as u64;
                        prop_assert_eq!(
                            outcome,
                            Ok(vec![expected_message(index, seq, cast(user), "hi", &id)])
                        );
                    }
                }
                Op::SendBlank { user } => {
                    let outcome = driver.execute(send_numbered(index, cast(user), "  ", "b"));
                    let expected = if members.contains(&user) {
                        RoomError::InvalidBody(ValueError::BodyBlank)
                    } else {
                        RoomError::NotMember
                    };
                    prop_assert_eq!(outcome, Err(expected));
                }
                Op::Join { user } => {
                    let outcome = driver.execute(join(cast(user)));
                    if members.insert(user) {
                        prop_assert_eq!(outcome, Ok(vec![member_joined(cast(user))]));
                    } else {
                        prop_assert_eq!(outcome, Err(RoomError::AlreadyMember));
                    }
                }
                Op::Leave { user } => {
                    let outcome = driver.execute(leave(cast(user)));
                    if members.remove(&user) {
                        prop_assert_eq!(outcome, Ok(vec![member_left(cast(user))]));
                    } else {
                        prop_assert_eq!(outcome, Err(RoomError::NotMember));
                    }
                }
            }
        }

        let seqs = driver.message_seqs();
        let n = seqs.len() as u64;
        prop_assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
        prop_assert_eq!(driver.room.last_seq(), MessageSeq(n));
        driver.assert_replay_matches()?;
    }

    /// Sending any list of clientMsgIds, repeats included, yields exactly one `MessageSent`
    /// per distinct (sender, clientMsgId), also for repeats that fell out of the window.
    #[test]
    fn each_distinct_sender_and_client_msg_id_is_sent_exactly_once(
        sends in prop::collection::vec((0..3u8, key()), 0..800)
    ) {
        let mut driver = Driver::new(cast(0));
        for user in 1..3 {
            prop_assert!(driver.execute(join(cast(user))).is_ok());
        }
        let mut attempts = Attempts::default();
        let mut sent_before = HashSet::new();
        for (index, (user, key)) in sends.iter().enumerate() {
            let (user, id) = attempts.resolve(index, *user, key);
            let events = driver
                .execute(send_numbered(index, cast(user), "hi", &id))
                .expect("members may send");
            let first_time = sent_before.insert((cast(user), id));
            prop_assert_eq!(events.len(), usize::from(first_time));
        }

        let mut per_pair: HashMap<(UserId, String), usize> = HashMap::new();
        for event in &driver.history {
            if let RoomEvent::MessageSent { sender, client_msg_id, .. } = event {
                *per_pair
                    .entry((*sender, client_msg_id.as_str().to_owned()))
                    .or_default() += 1;
            }
        }
        prop_assert_eq!(per_pair.len(), sent_before.len());
        for pair in &sent_before {
            prop_assert_eq!(per_pair.get(pair), Some(&1), "pair {:?}", pair);
        }
        driver.assert_replay_matches()?;
    }

    /// While no more messages than the window holds were sent, the room alone (with a
    /// directory that never remembers anything) already keeps sends idempotent.
    #[test]
    fn within_the_window_the_room_alone_keeps_sends_idempotent(
        sends in prop::collection::vec((0..CAST, 0..(IDEMPOTENCY_WINDOW as u16 / 4)), 0..600)
    ) {
        let forgetful: Arc<dyn RoomServices> = FakeDirectory::empty().room_services();
        let mut driver =
            Driver::with_services(cast(0), Arc::new(RecordingDirectory::default()), forgetful);
        for user in 1..CAST {
            prop_assert!(driver.execute(join(cast(user))).is_ok());
        }
        let mut sent_before = HashSet::new();
        for (index, (user, id)) in sends.iter().enumerate() {
            let events = driver
                .execute(send_numbered(index, cast(*user), "hi", &format!("id-{id}")))
                .expect("members may send");
            prop_assert_eq!(events.len(), usize::from(sent_before.insert((*user, *id))));
        }
        prop_assert!(sent_before.len() <= IDEMPOTENCY_WINDOW);
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary values and events
// ---------------------------------------------------------------------------------------------

fn user_id() -> impl Strategy<Value = UserId> {
    prop_oneof![
        (0..6u32).prop_map(user),
        any::<u128>().prop_map(|n| UserId(Uuid::from_u128(n))),
    ]
}

fn message_id_strategy() -> impl Strategy<Value = MessageId> {
    any::<u128>().prop_map(|n| MessageId(Uuid::from_u128(n)))
}

fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    // Years 0001 to 9999, any nanosecond.
    (-62_135_596_800i64..253_402_300_800, 0u32..1_000_000_000)
        .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).expect("in range"))
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::string::string_regex(&format!("(\\PC|\\s){{0,{max}}}")).expect("valid regex")
}

fn username_strategy() -> impl Strategy<Value = Username> {
    "[a-z0-9_]{3,32}".prop_map(|s| Username::parse(&s).expect("valid by construction"))
}

fn room_name_strategy() -> impl Strategy<Value = RoomName> {
    text(RoomName::MAX).prop_filter_map("a valid room name", |s| RoomName::parse(&s).ok())
}

fn body_strategy() -> impl Strategy<Value = MessageBody> {
    text(300).prop_filter_map("a valid body", |s| MessageBody::parse(&s).ok())
}

fn client_msg_id_strategy() -> impl Strategy<Value = ClientMsgId> {
    prop_oneof![
        (0..10u8).prop_map(|n| client_msg_id(&format!("c-{n}"))),
        text(ClientMsgId::MAX).prop_filter_map("a valid id", |s| ClientMsgId::parse(&s).ok()),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Analyst), Just(Role::Admin)]
}

fn visibility_strategy() -> impl Strategy<Value = RoomVisibility> {
    prop_oneof![
        Just(RoomVisibility::Public),
        Just(RoomVisibility::Private),
        Just(RoomVisibility::Direct)
    ]
}

fn role_in_room() -> impl Strategy<Value = RoomRole> {
    prop_oneof![
        Just(RoomRole::Host),
        Just(RoomRole::Moderator),
        Just(RoomRole::Member)
    ]
}

fn room_event() -> impl Strategy<Value = RoomEvent> {
    prop_oneof![
        1 => (
            any::<u128>(),
            room_name_strategy(),
            user_id(),
            timestamp(),
            visibility_strategy(),
            proptest::option::of(user_id()),
        )
            .prop_map(|(room, name, host, created_at, visibility, peer)| RoomEvent::RoomCreated {
                room_id: parley_domain::RoomId(Uuid::from_u128(room)),
                name,
                host,
                created_at,
                visibility,
                peer,
            }),
        1 => (user_id(), role_in_room(), user_id()).prop_map(|(user_id, role, changed_by)| {
            RoomEvent::MemberRoleChanged { user_id, role, changed_by }
        }),
        1 => (user_id(), user_id()).prop_map(|(user_id, kicked_by)| {
            RoomEvent::MemberKicked { user_id, kicked_by }
        }),
        1 => (user_id(), user_id(), proptest::option::of("[a-z ]{0,40}")).prop_map(
            |(user_id, banned_by, reason)| RoomEvent::MemberBanned {
                user_id,
                banned_by,
                reason: reason.map(|r| BanReason::parse(&r).expect("short")),
            }
        ),
        1 => (user_id(), user_id()).prop_map(|(user_id, unbanned_by)| {
            RoomEvent::MemberUnbanned { user_id, unbanned_by }
        }),
        1 => (user_id(), user_id()).prop_map(|(user_id, invited_by)| {
            RoomEvent::MemberInvited { user_id, invited_by }
        }),
        2 => user_id().prop_map(|user_id| RoomEvent::MemberJoined { user_id }),
        1 => user_id().prop_map(|user_id| RoomEvent::MemberLeft { user_id }),
        6 => (
            message_id_strategy(),
            any::<u64>(),
            user_id(),
            body_strategy(),
            client_msg_id_strategy(),
            timestamp(),
        )
            .prop_map(|(message_id, seq, sender, body, client_msg_id, sent_at)| {
                RoomEvent::MessageSent {
                    message_id,
                    seq: MessageSeq(seq),
                    sender,
                    body,
                    client_msg_id,
                    sent_at,
                    reply_to: None,
                }
            }),
        1 => (1..1_000u64, user_id(), "[a-z ]{1,20}", timestamp()).prop_map(
            |(seq, editor, text, edited_at)| RoomEvent::MessageEdited {
                seq: MessageSeq(seq),
                editor,
                body: body(&format!("x{text}")),
                edited_at,
            }
        ),
        1 => (1..1_000u64, user_id(), timestamp()).prop_map(|(seq, deleted_by, deleted_at)| {
            RoomEvent::MessageDeleted {
                seq: MessageSeq(seq),
                deleted_by,
                deleted_at,
            }
        }),
        1 => (1..1_000u64, user_id(), "[a-z:+]{1,16}", any::<bool>()).prop_map(
            |(seq, user_id, e, added)| {
                let emoji = emoji(&e);
                if added {
                    RoomEvent::ReactionAdded { seq: MessageSeq(seq), user_id, emoji }
                } else {
                    RoomEvent::ReactionRemoved { seq: MessageSeq(seq), user_id, emoji }
                }
            }
        ),
    ]
}

/// Events as cheap to generate as they are relevant to a room's state: bodies and names do
/// not shape it, so they are fixed; long histories overflow the idempotency window.
fn state_event() -> impl Strategy<Value = RoomEvent> {
    prop_oneof![
        1 => (0..6u32, 0..6u32).prop_map(|(u, by)| member_invited(user(u), user(by))),
        2 => (0..6u32).prop_map(|u| member_joined(user(u))),
        1 => (0..6u32).prop_map(|u| member_left(user(u))),
        1 => (0..6u32, 0..3u8).prop_map(|(u, r)| {
            let role = [RoomRole::Host, RoomRole::Moderator, RoomRole::Member][usize::from(r)];
            role_changed(user(u), role, user(0))
        }),
        1 => (0..6u32).prop_map(|u| kicked(user(u), user(0))),
        1 => (0..6u32).prop_map(|u| banned(user(u), user(0), None)),
        1 => (0..6u32).prop_map(|u| unbanned(user(u), user(0))),
        12 => (message_id_strategy(), 1..1_000u64, 0..6u32, 0..300u16, timestamp()).prop_map(
            |(message_id, seq, sender, id, sent_at)| RoomEvent::MessageSent {
                message_id,
                seq: MessageSeq(seq),
                sender: user(sender),
                body: body("hello"),
                client_msg_id: client_msg_id(&format!("c-{id}")),
                sent_at,
                reply_to: None,
            }
        ),
        2 => (1..1_000u64, 0..6u32).prop_map(|(seq, u)| deleted(seq, user(u))),
        2 => (1..1_000u64, 0..6u32, 0..3u8, any::<bool>()).prop_map(|(seq, u, e, added)| {
            let e = ["👍", ":+1:", "🎉"][usize::from(e)];
            if added { reaction_added(seq, user(u), e) } else { reaction_removed(seq, user(u), e) }
        }),
    ]
}

fn user_event() -> impl Strategy<Value = UserEvent> {
    prop_oneof![
        (user_id(), username_strategy(), text(120), timestamp()).prop_map(
            |(user_id, username, password_hash, registered_at)| UserEvent::UserRegistered {
                user_id,
                username,
                password_hash,
                registered_at,
            }
        ),
        role().prop_map(|role| UserEvent::RoleGranted { role }),
        user_id().prop_map(|user_id| UserEvent::UserBlocked { user_id }),
        user_id().prop_map(|user_id| UserEvent::UserUnblocked { user_id }),
    ]
}

/// The JSON is `{"<event_type>": {...}}`: externally tagged by the variant name.
fn assert_externally_tagged(json: &Value, event_type: &str) -> Result<(), TestCaseError> {
    let object = json.as_object().expect("an event serializes to an object");
    prop_assert_eq!(object.len(), 1, "{}", json);
    prop_assert!(object.contains_key(event_type), "{}", json);
    prop_assert!(object[event_type].is_object(), "{}", json);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (3) event serde round trip, (4) snapshot round trip
// ---------------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn every_room_event_survives_a_json_round_trip_externally_tagged(event in room_event()) {
        let text = serde_json::to_string(&event).expect("serializes");
        prop_assert_eq!(&serde_json::from_str::<RoomEvent>(&text).expect("deserializes"), &event);

        let json: Value = serde_json::from_str(&text).expect("is JSON");
        assert_externally_tagged(&json, &event.event_type())?;
        prop_assert_eq!(event.event_version(), EVENT_VERSION);

        if let RoomEvent::MessageSent { sender, client_msg_id, seq, .. } = &event {
            // The event store indexes these exact paths.
            prop_assert_eq!(
                json.pointer("/MessageSent/sender"),
                Some(&Value::String(sender.to_string()))
            );
            prop_assert_eq!(
                json.pointer("/MessageSent/client_msg_id"),
                Some(&Value::String(client_msg_id.as_str().to_owned()))
            );
            prop_assert_eq!(json.pointer("/MessageSent/seq"), Some(&json!(seq.0)));
        }
    }

    #[test]
    fn every_user_event_survives_a_json_round_trip_externally_tagged(event in user_event()) {
        let text = serde_json::to_string(&event).expect("serializes");
        prop_assert_eq!(&serde_json::from_str::<UserEvent>(&text).expect("deserializes"), &event);

        let json: Value = serde_json::from_str(&text).expect("is JSON");
        assert_externally_tagged(&json, &event.event_type())?;
        prop_assert_eq!(event.event_version(), EVENT_VERSION);
    }

    #[test]
    fn a_room_snapshot_survives_a_json_round_trip(
        rich in prop::collection::vec(room_event(), 0..8),
        events in prop::collection::vec(state_event(), 0..600)
    ) {
        let mut room = Room::default();
        room.apply(room_created(ROOM, ALICE));
        for event in rich.into_iter().chain(events) {
            room.apply(event);
        }
        let snapshot = serde_json::to_value(&room).expect("serializes");
        let restored: Room = serde_json::from_value(snapshot).expect("deserializes");
        prop_assert_eq!(restored, room);
    }

    #[test]
    fn a_user_snapshot_survives_a_json_round_trip(
        events in prop::collection::vec(user_event(), 0..10)
    ) {
        let mut user = User::default();
        for event in events {
            user.apply(event);
        }
        let snapshot = serde_json::to_string(&user).expect("serializes");
        let restored: User = serde_json::from_str(&snapshot).expect("deserializes");
        prop_assert_eq!(restored, user);
    }
}

// ---------------------------------------------------------------------------------------------
// The stored shape, spelled out once
// ---------------------------------------------------------------------------------------------

#[test]
fn a_message_sent_event_has_the_stored_json_shape() {
    let event = message_sent(7, BOB, "c-7");
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        json!({
            "MessageSent": {
                "message_id": message_id(7).to_string(),
                "seq": 7,
                "sender": BOB.to_string(),
                "body": "hello",
                "client_msg_id": "c-7",
                "sent_at": "2024-01-01T00:00:07Z",
            }
        })
    );
}

#[test]
fn the_other_events_have_the_stored_json_shape() {
    assert_eq!(
        serde_json::to_value(room_created(ROOM, ALICE)).unwrap(),
        json!({"RoomCreated": {
            "room_id": ROOM.to_string(),
            "name": ROOM_NAME,
            "host": ALICE.to_string(),
            "created_at": "2024-01-01T00:00:00Z",
        }})
    );
    assert_eq!(
        serde_json::to_value(member_invited(BOB, ALICE)).unwrap(),
        json!({"MemberInvited": {"user_id": BOB.to_string(), "invited_by": ALICE.to_string()}})
    );
    assert_eq!(
        serde_json::to_value(member_joined(BOB)).unwrap(),
        json!({"MemberJoined": {"user_id": BOB.to_string()}})
    );
    assert_eq!(
        serde_json::to_value(member_left(BOB)).unwrap(),
        json!({"MemberLeft": {"user_id": BOB.to_string()}})
    );
    assert_eq!(
        serde_json::to_value(role_granted(Role::Analyst)).unwrap(),
        json!({"RoleGranted": {"role": "analyst"}})
    );
    assert_eq!(
        serde_json::to_value(user_registered(ALICE, "alice")).unwrap(),
        json!({"UserRegistered": {
            "user_id": ALICE.to_string(),
            "username": "alice",
            "password_hash": PASSWORD_HASH,
            "registered_at": "2024-01-01T01:00:00Z",
        }})
    );
}
