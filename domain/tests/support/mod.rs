//! Shared test support: in-memory services, fixed ids and timestamps, and event and command
//! builders. Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parley_domain::room::IDEMPOTENCY_WINDOW;
use parley_domain::{
    BanReason, ClientMsgId, Emoji, MessageBody, MessageFacts, MessageId, MessageSeq, Role,
    RoomCommand, RoomEvent, RoomId, RoomName, RoomRole, RoomServices, RoomTopic, RoomVisibility,
    ServiceError, UserCommand, UserEvent, UserId, UserServices, Username,
};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Fixed ids and timestamps
// ---------------------------------------------------------------------------------------------

pub const ROOM: RoomId = RoomId(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0001));
pub const ALICE: UserId = UserId(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_a11c));
pub const BOB: UserId = UserId(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0b0b));
pub const CAROL: UserId = UserId(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_ca01));
pub const DAVE: UserId = UserId(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_da7e));
/// Never registered in any directory.
pub const MALLORY: UserId = UserId(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_ba0d));

/// The message id every `send` command carries.
pub const NEW_MESSAGE: MessageId =
    MessageId(Uuid::from_u128(0x0000_0000_0000_7000_8000_00ff_ffff_ffff));

/// What a failing directory answers.
pub const OUTAGE: &str = "directory unavailable";

/// The n-th of a family of distinct users, none equal to the named ones above.
pub fn user(n: u32) -> UserId {
    UserId(Uuid::from_u128(
        0x1000_0000_0000_7000_8000_0000_0000_0000 | u128::from(n),
    ))
}

/// The message id of the given message in fixture histories.
pub fn message_id(seq: u64) -> MessageId {
    MessageId(Uuid::from_u128(
        0x2000_0000_0000_7000_8000_0000_0000_0000 | u128::from(seq),
    ))
}

/// A fixed instant, `secs` seconds after the fixture epoch (2024-01-01T00:00:00Z).
pub fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_704_067_200 + secs, 0).expect("in range")
}

/// The instant every command in these tests carries.
pub fn now() -> DateTime<Utc> {
    at(3_600)
}

pub fn service_error() -> ServiceError {
    ServiceError::Unavailable(OUTAGE.to_owned())
}

// ---------------------------------------------------------------------------------------------
// In-memory services
// ---------------------------------------------------------------------------------------------

/// An in-memory directory answering both aggregates' lookups from fixed sets.
#[derive(Clone, Debug, Default)]
pub struct FakeDirectory {
    pub taken_usernames: HashSet<String>,
    pub users: HashSet<UserId>,
    /// Senders of old messages of `ROOM` (older than the room's window), by seq.
    pub senders: HashMap<u64, UserId>,
    /// Who blocks whom: (blocker, blocked).
    pub blocks: HashSet<(UserId, UserId)>,
    /// Every lookup fails with `ServiceError::Unavailable(OUTAGE)`.
    pub fail: bool,
}

impl FakeDirectory {
    /// A directory that knows nothing: no users, no taken usernames, no used client ids.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A directory in which ALICE, BOB, CAROL and DAVE are registered.
    pub fn with_cast() -> Self {
        Self::empty().with_users([ALICE, BOB, CAROL, DAVE])
    }

    /// A directory whose every lookup fails.
    pub fn failing() -> Self {
        Self {
            fail: true,
            ..Self::with_cast()
        }
    }

    pub fn with_users(mut self, users: impl IntoIterator<Item = UserId>) -> Self {
        self.users.extend(users);
        self
    }

    /// `blocker` blocks `user`.
    pub fn with_block(mut self, blocker: UserId, user: UserId) -> Self {
        self.blocks.insert((blocker, user));
        self
    }

    /// The store knows that `sender` sent message `seq` of `ROOM`.
    pub fn with_message(mut self, seq: u64, sender: UserId) -> Self {
        self.senders.insert(seq, sender);
        self
    }

    pub fn with_taken_username(mut self, username: &str) -> Self {
        self.taken_usernames.insert(username.to_owned());
        self
    }

    pub fn room_services(self) -> Arc<dyn RoomServices> {
        Arc::new(self)
    }

    pub fn user_services(self) -> Arc<dyn UserServices> {
        Arc::new(self)
    }

    fn check(&self) -> Result<(), ServiceError> {
        if self.fail {
            Err(service_error())
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl UserServices for FakeDirectory {
    async fn username_taken(&self, username: &Username) -> Result<bool, ServiceError> {
        self.check()?;
        Ok(self.taken_usernames.contains(username.as_str()))
    }

    async fn user_exists(&self, user: UserId) -> Result<bool, ServiceError> {
        self.check()?;
        Ok(self.users.contains(&user))
    }
}

#[async_trait]
impl RoomServices for FakeDirectory {
    async fn user_exists(&self, user: UserId) -> Result<bool, ServiceError> {
        self.check()?;
        Ok(self.users.contains(&user))
    }

    async fn message_sender(
        &self,
        room: RoomId,
        seq: MessageSeq,
    ) -> Result<Option<MessageFacts>, ServiceError> {
        self.check()?;
        let sender = (room == ROOM).then(|| self.senders.get(&seq.0)).flatten();
        Ok(sender.map(|&sender| MessageFacts { sender }))
    }

    async fn blocks(&self, blocker: UserId, user: UserId) -> Result<bool, ServiceError> {
        self.check()?;
        Ok(self.blocks.contains(&(blocker, user)))
    }
}

/// A directory backed by a growing event log, as the server's is. It also keeps the event
/// store's unique key on (room, sender, clientMsgId): [`RecordingDirectory::used`] says whether
/// the store would refuse a message. Every user exists.
#[derive(Debug, Default)]
pub struct RecordingDirectory {
    sent: Mutex<HashSet<(RoomId, UserId, ClientMsgId)>>,
}

impl RecordingDirectory {
    /// Whether a message with this key is recorded (the store would refuse another).
    pub fn used(&self, room: RoomId, sender: UserId, client_msg_id: &ClientMsgId) -> bool {
        let sent = self.sent.lock().expect("not poisoned");
        sent.contains(&(room, sender, client_msg_id.clone()))
    }

    /// Records the messages among `events`, which were emitted by the room `room`.
    pub fn record(&self, room: RoomId, events: &[RoomEvent]) {
        let mut sent = self.sent.lock().expect("not poisoned");
        for event in events {
            if let RoomEvent::MessageSent {
                sender,
                client_msg_id,
                ..
            } = event
            {
                sent.insert((room, *sender, client_msg_id.clone()));
            }
        }
    }
}

#[async_trait]
impl RoomServices for RecordingDirectory {
    async fn user_exists(&self, _user: UserId) -> Result<bool, ServiceError> {
        Ok(true)
    }

    async fn blocks(&self, _blocker: UserId, _user: UserId) -> Result<bool, ServiceError> {
        Ok(false)
    }

    async fn message_sender(
        &self,
        _room: RoomId,
        _seq: MessageSeq,
    ) -> Result<Option<MessageFacts>, ServiceError> {
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------------
// Value shorthands (valid by construction; panic otherwise)
// ---------------------------------------------------------------------------------------------

pub fn username(s: &str) -> Username {
    Username::parse(s).expect("valid username")
}

pub fn room_name(s: &str) -> RoomName {
    RoomName::parse(s).expect("valid room name")
}

pub fn body(s: &str) -> MessageBody {
    MessageBody::parse(s).expect("valid body")
}

pub fn client_msg_id(s: &str) -> ClientMsgId {
    ClientMsgId::parse(s).expect("valid clientMsgId")
}

// ---------------------------------------------------------------------------------------------
// User events and commands
// ---------------------------------------------------------------------------------------------

pub const PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";

pub fn user_registered(user_id: UserId, name: &str) -> UserEvent {
    UserEvent::UserRegistered {
        user_id,
        username: username(name),
        password_hash: PASSWORD_HASH.to_owned(),
        registered_at: now(),
    }
}

pub fn role_granted(role: Role) -> UserEvent {
    UserEvent::RoleGranted { role }
}

pub fn register(user_id: UserId, username: &str, password_hash: &str) -> UserCommand {
    UserCommand::RegisterUser {
        user_id,
        username: username.to_owned(),
        password_hash: password_hash.to_owned(),
        registered_at: now(),
    }
}

pub fn grant(role: Role) -> UserCommand {
    UserCommand::GrantRole { role }
}

// ---------------------------------------------------------------------------------------------
// Room events and commands
// ---------------------------------------------------------------------------------------------

pub const ROOM_NAME: &str = "general";

pub fn room_created(room_id: RoomId, host: UserId) -> RoomEvent {
    RoomEvent::RoomCreated {
        room_id,
        name: room_name(ROOM_NAME),
        host,
        created_at: at(0),
        visibility: RoomVisibility::Public,
        peer: None,
    }
}

/// A PRIVATE room `room_id` hosted by `host`.
pub fn private_room_created(room_id: RoomId, host: UserId) -> RoomEvent {
    RoomEvent::RoomCreated {
        room_id,
        name: room_name(ROOM_NAME),
        host,
        created_at: at(0),
        visibility: RoomVisibility::Private,
        peer: None,
    }
}

/// The events of `by` opening the direct room with `peer` for the first time, at `now()`.
pub fn direct_opened(by: UserId, peer: UserId) -> Vec<RoomEvent> {
    vec![
        RoomEvent::RoomCreated {
            room_id: RoomId::direct(by, peer),
            name: room_name(parley_domain::room::DIRECT_ROOM_NAME),
            host: by,
            created_at: now(),
            visibility: RoomVisibility::Direct,
            peer: Some(peer),
        },
        member_joined(peer),
    ]
}

pub fn role_changed(user_id: UserId, role: RoomRole, changed_by: UserId) -> RoomEvent {
    RoomEvent::MemberRoleChanged {
        user_id,
        role,
        changed_by,
    }
}

pub fn kicked(user_id: UserId, kicked_by: UserId) -> RoomEvent {
    RoomEvent::MemberKicked { user_id, kicked_by }
}

pub fn banned(user_id: UserId, banned_by: UserId, reason: Option<&str>) -> RoomEvent {
    RoomEvent::MemberBanned {
        user_id,
        banned_by,
        reason: reason.map(|r| BanReason::parse(r).expect("valid reason")),
    }
}

pub fn unbanned(user_id: UserId, unbanned_by: UserId) -> RoomEvent {
    RoomEvent::MemberUnbanned {
        user_id,
        unbanned_by,
    }
}

pub fn member_invited(user_id: UserId, invited_by: UserId) -> RoomEvent {
    RoomEvent::MemberInvited {
        user_id,
        invited_by,
    }
}

pub fn member_joined(user_id: UserId) -> RoomEvent {
    RoomEvent::MemberJoined { user_id }
}

pub fn member_left(user_id: UserId) -> RoomEvent {
    RoomEvent::MemberLeft { user_id }
}

/// A message from fixture history: id `message_id(seq)`, body "hello", sent `seq` seconds in.
pub fn message_sent(seq: u64, sender: UserId, client_id: &str) -> RoomEvent {
    RoomEvent::MessageSent {
        message_id: message_id(seq),
        seq: MessageSeq(seq),
        sender,
        body: body("hello"),
        client_msg_id: client_msg_id(client_id),
        sent_at: at(i64::try_from(seq).expect("small seq")),
        reply_to: None,
    }
}

/// The event a successful `send(sender, body, client_id)` is expected to produce.
pub fn sent_now(seq: u64, sender: UserId, text: &str, client_id: &str) -> RoomEvent {
    RoomEvent::MessageSent {
        message_id: NEW_MESSAGE,
        seq: MessageSeq(seq),
        sender,
        body: body(text),
        client_msg_id: client_msg_id(client_id),
        sent_at: now(),
        reply_to: None,
    }
}

/// `ROOM` created by ALICE, with BOB joined: the usual starting point for messaging.
pub fn room_with_alice_and_bob() -> Vec<RoomEvent> {
    vec![room_created(ROOM, ALICE), member_joined(BOB)]
}

/// `count` messages from `sender` with client ids "bulk-<seq>", seqs `first_seq..`.
pub fn bulk_messages(first_seq: u64, count: usize, sender: UserId) -> Vec<RoomEvent> {
    (first_seq..)
        .take(count)
        .map(|seq| message_sent(seq, sender, &format!("bulk-{seq}")))
        .collect()
}

/// Enough later messages to push one message out of the room's idempotency window.
pub const PAST_THE_WINDOW: usize = IDEMPOTENCY_WINDOW + 1;

pub fn create_room(host: UserId, name: &str, participants: Vec<UserId>) -> RoomCommand {
    RoomCommand::CreateRoom {
        room_id: ROOM,
        host,
        name: name.to_owned(),
        participants,
        visibility: RoomVisibility::Public,
        created_at: at(0),
    }
}

pub fn create_private_room(host: UserId, participants: Vec<UserId>) -> RoomCommand {
    RoomCommand::CreateRoom {
        room_id: ROOM,
        host,
        name: ROOM_NAME.to_owned(),
        participants,
        visibility: RoomVisibility::Private,
        created_at: at(0),
    }
}

pub fn open_direct(by: UserId, peer: UserId) -> RoomCommand {
    RoomCommand::OpenDirect {
        room_id: RoomId::direct(by, peer),
        by,
        peer,
        opened_at: now(),
    }
}

pub fn set_role(by: UserId, user: UserId, role: RoomRole) -> RoomCommand {
    RoomCommand::SetRole { by, user, role }
}

pub fn kick(by: UserId, user: UserId) -> RoomCommand {
    RoomCommand::Kick { by, user }
}

pub fn ban(by: UserId, user: UserId, reason: Option<&str>) -> RoomCommand {
    RoomCommand::Ban {
        by,
        user,
        reason: reason.map(str::to_owned),
    }
}

pub fn unban(by: UserId, user: UserId) -> RoomCommand {
    RoomCommand::Unban { by, user }
}

pub fn join(user: UserId) -> RoomCommand {
    RoomCommand::JoinRoom { user }
}

pub fn leave(user: UserId) -> RoomCommand {
    RoomCommand::LeaveRoom { user }
}

pub fn send(sender: UserId, text: &str, client_id: &str) -> RoomCommand {
    RoomCommand::SendMessage {
        message_id: NEW_MESSAGE,
        sender,
        body: text.to_owned(),
        client_msg_id: client_id.to_owned(),
        reply_to: None,
        sent_at: now(),
    }
}

pub fn emoji(s: &str) -> Emoji {
    Emoji::parse(s).expect("valid emoji")
}

pub fn reply(sender: UserId, text: &str, client_id: &str, to: u64) -> RoomCommand {
    match send(sender, text, client_id) {
        RoomCommand::SendMessage {
            message_id,
            sender,
            body,
            client_msg_id,
            sent_at,
            ..
        } => RoomCommand::SendMessage {
            message_id,
            sender,
            body,
            client_msg_id,
            reply_to: Some(MessageSeq(to)),
            sent_at,
        },
        other => other,
    }
}

pub fn edit(editor: UserId, seq: u64, text: &str) -> RoomCommand {
    RoomCommand::EditMessage {
        editor,
        seq: MessageSeq(seq),
        body: text.to_owned(),
        edited_at: now(),
    }
}

pub fn edited(seq: u64, editor: UserId, text: &str) -> RoomEvent {
    RoomEvent::MessageEdited {
        seq: MessageSeq(seq),
        editor,
        body: body(text),
        edited_at: now(),
    }
}

pub fn delete(by: UserId, seq: u64) -> RoomCommand {
    RoomCommand::DeleteMessage {
        by,
        seq: MessageSeq(seq),
        deleted_at: now(),
    }
}

pub fn deleted(seq: u64, by: UserId) -> RoomEvent {
    RoomEvent::MessageDeleted {
        seq: MessageSeq(seq),
        deleted_by: by,
        deleted_at: now(),
    }
}

pub fn react(user: UserId, seq: u64, e: &str) -> RoomCommand {
    RoomCommand::React {
        user,
        seq: MessageSeq(seq),
        emoji: e.to_owned(),
    }
}

pub fn unreact(user: UserId, seq: u64, e: &str) -> RoomCommand {
    RoomCommand::Unreact {
        user,
        seq: MessageSeq(seq),
        emoji: e.to_owned(),
    }
}

pub fn reaction_added(seq: u64, user_id: UserId, e: &str) -> RoomEvent {
    RoomEvent::ReactionAdded {
        seq: MessageSeq(seq),
        user_id,
        emoji: emoji(e),
    }
}

pub fn reaction_removed(seq: u64, user_id: UserId, e: &str) -> RoomEvent {
    RoomEvent::ReactionRemoved {
        seq: MessageSeq(seq),
        user_id,
        emoji: emoji(e),
    }
}

pub fn invite(by: UserId, user: UserId) -> RoomCommand {
    RoomCommand::Invite { by, user }
}

pub fn update(by: UserId, name: Option<&str>, topic: Option<&str>) -> RoomCommand {
    RoomCommand::UpdateRoom {
        by,
        name: name.map(str::to_owned),
        topic: topic.map(str::to_owned),
    }
}

pub fn updated(by: UserId, name: Option<&str>, topic: Option<&str>) -> RoomEvent {
    RoomEvent::RoomUpdated {
        updated_by: by,
        name: name.map(room_name),
        topic: topic.map(|t| RoomTopic::parse(t).expect("valid topic")),
    }
}
