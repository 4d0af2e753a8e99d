//! Given/when/then rules of the `Room` aggregate.

mod support;

use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use parley_domain::room::{IDEMPOTENCY_WINDOW, MAX_PARTICIPANTS};
use parley_domain::{MessageSeq, Room, RoomError, RoomEvent, ValueError};
use support::*;

fn with(directory: FakeDirectory) -> TestFramework<Room> {
    TestFramework::<Room>::with(directory.room_services())
}

fn replay(events: impl IntoIterator<Item = RoomEvent>) -> Room {
    let mut room = Room::default();
    for event in events {
        room.apply(event);
    }
    room
}

// --- CreateRoom ------------------------------------------------------------------------------

#[test]
fn creating_a_room_records_room_created_then_one_invitation_per_participant_in_given_order() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(create_room(ALICE, ROOM_NAME, vec![CAROL, BOB, DAVE]))
        .then_expect_events(vec![
            room_created(ROOM, ALICE),
            member_invited(CAROL, ALICE),
            member_invited(BOB, ALICE),
            member_invited(DAVE, ALICE),
        ]);
}

#[test]
fn creating_a_room_without_participants_records_only_room_created() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(create_room(ALICE, ROOM_NAME, vec![]))
        .then_expect_events(vec![room_created(ROOM, ALICE)]);
}

#[test]
fn the_host_and_repeated_participants_are_not_invited_again() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(create_room(
            ALICE,
            ROOM_NAME,
            vec![BOB, ALICE, BOB, CAROL, ALICE, CAROL],
        ))
        .then_expect_events(vec![
            room_created(ROOM, ALICE),
            member_invited(BOB, ALICE),
            member_invited(CAROL, ALICE),
        ]);
}

#[test]
fn creating_a_room_that_exists_is_refused() {
    with(FakeDirectory::with_cast())
        .given(vec![room_created(ROOM, ALICE)])
        .when(create_room(BOB, "another", vec![]))
        .then_expect_error(RoomError::RoomAlreadyExists);
}

#[test]
fn an_empty_room_name_is_refused() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(create_room(ALICE, "", vec![]))
        .then_expect_error(RoomError::InvalidName(ValueError::RoomNameBlank));
}

#[test]
fn a_whitespace_only_room_name_is_refused() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(create_room(ALICE, " \t \n ", vec![]))
        .then_expect_error(RoomError::InvalidName(ValueError::RoomNameBlank));
}

#[test]
fn a_room_name_of_101_characters_is_refused() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(create_room(ALICE, &"é".repeat(101), vec![]))
        .then_expect_error(RoomError::InvalidName(ValueError::RoomNameTooLong {
            max: 100,
            len: 101,
        }));
}

#[test]
fn a_room_name_of_100_characters_is_accepted_as_given() {
    let name = format!("  {}", "é".repeat(98));
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(create_room(ALICE, &name, vec![]))
        .then_expect_events(vec![RoomEvent::RoomCreated {
            room_id: ROOM,
            name: room_name(&name),
            host: ALICE,
            created_at: at(0),
            visibility: parley_domain::RoomVisibility::Public,
            peer: None,
        }]);
}

#[test]
fn an_unregistered_participant_is_refused_by_id() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(create_room(ALICE, ROOM_NAME, vec![BOB, MALLORY, CAROL]))
        .then_expect_error(RoomError::UnknownParticipant(MALLORY));
}

#[test]
fn inviting_101_distinct_users_is_refused() {
    let crowd: Vec<_> = (0..101).map(user).collect();
    with(FakeDirectory::with_cast().with_users(crowd.clone()))
        .given_no_previous_events()
        .when(create_room(ALICE, ROOM_NAME, crowd))
        .then_expect_error(RoomError::TooManyParticipants {
            max: MAX_PARTICIPANTS,
            count: 101,
        });
}

#[test]
fn inviting_100_distinct_users_plus_the_host_and_repeats_is_accepted() {
    let crowd: Vec<_> = (0..100).map(user).collect();
    let mut participants = crowd.clone();
    participants.push(ALICE);
    participants.extend(crowd.iter().rev().copied());

    let mut expected = vec![room_created(ROOM, ALICE)];
    expected.extend(crowd.iter().map(|&u| member_invited(u, ALICE)));

    with(FakeDirectory::with_cast().with_users(crowd))
        .given_no_previous_events()
        .when(create_room(ALICE, ROOM_NAME, participants))
        .then_expect_events(expected);
}

#[test]
fn a_failing_participant_lookup_is_reported_as_a_service_error() {
    with(FakeDirectory::failing())
        .given_no_previous_events()
        .when(create_room(ALICE, ROOM_NAME, vec![BOB]))
        .then_expect_error(RoomError::Service(service_error()));
}

#[test]
fn a_created_room_has_its_host_as_only_member_and_its_participants_invited() {
    let room = replay([
        room_created(ROOM, ALICE),
        member_invited(BOB, ALICE),
        member_invited(CAROL, ALICE),
    ]);
    assert_eq!(room.id(), Some(ROOM));
    assert_eq!(room.host(), Some(ALICE));
    assert_eq!(room.members().iter().copied().collect::<Vec<_>>(), [ALICE]);
    assert!(room.invited().contains(&BOB) && room.invited().contains(&CAROL));
    assert!(!room.is_member(BOB));
    assert_eq!(room.last_seq(), MessageSeq(0));
}

// --- JoinRoom --------------------------------------------------------------------------------

#[test]
fn a_user_joining_records_member_joined() {
    with(FakeDirectory::with_cast())
        .given(vec![room_created(ROOM, ALICE)])
        .when(join(BOB))
        .then_expect_events(vec![member_joined(BOB)]);
}

#[test]
fn an_invited_user_joining_records_member_joined() {
    with(FakeDirectory::with_cast())
        .given(vec![room_created(ROOM, ALICE), member_invited(BOB, ALICE)])
        .when(join(BOB))
        .then_expect_events(vec![member_joined(BOB)]);
}

#[test]
fn an_invited_user_who_joined_is_a_member_and_no_longer_invited() {
    let room = replay([
        room_created(ROOM, ALICE),
        member_invited(BOB, ALICE),
        member_joined(BOB),
    ]);
    assert!(room.is_member(BOB));
    assert!(!room.invited().contains(&BOB));
}

#[test]
fn joining_a_room_that_was_never_created_is_refused() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(join(BOB))
        .then_expect_error(RoomError::UnknownRoom);
}

#[test]
fn a_member_joining_again_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(join(BOB))
        .then_expect_error(RoomError::AlreadyMember);
}

#[test]
fn the_host_joining_the_room_they_created_is_refused() {
    with(FakeDirectory::with_cast())
        .given(vec![room_created(ROOM, ALICE)])
        .when(join(ALICE))
        .then_expect_error(RoomError::AlreadyMember);
}

// --- LeaveRoom -------------------------------------------------------------------------------

#[test]
fn a_member_leaving_records_member_left() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(leave(BOB))
        .then_expect_events(vec![member_left(BOB)]);
}

#[test]
fn the_host_may_leave() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(leave(ALICE))
        .then_expect_events(vec![member_left(ALICE)]);
}

#[test]
fn a_non_member_leaving_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(leave(CAROL))
        .then_expect_error(RoomError::NotMember);
}

#[test]
fn an_invited_user_who_never_joined_cannot_leave() {
    with(FakeDirectory::with_cast())
        .given(vec![room_created(ROOM, ALICE), member_invited(BOB, ALICE)])
        .when(leave(BOB))
        .then_expect_error(RoomError::NotMember);
}

#[test]
fn a_member_who_left_cannot_leave_again() {
    with(FakeDirectory::with_cast())
        .given(vec![
            room_created(ROOM, ALICE),
            member_joined(BOB),
            member_left(BOB),
        ])
        .when(leave(BOB))
        .then_expect_error(RoomError::NotMember);
}

#[test]
fn leaving_a_room_that_was_never_created_is_refused() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(leave(BOB))
        .then_expect_error(RoomError::UnknownRoom);
}

#[test]
fn a_member_who_left_can_rejoin() {
    with(FakeDirectory::with_cast())
        .given(vec![
            room_created(ROOM, ALICE),
            member_joined(BOB),
            member_left(BOB),
        ])
        .when(join(BOB))
        .then_expect_events(vec![member_joined(BOB)]);
}

#[test]
fn a_host_who_left_can_rejoin() {
    with(FakeDirectory::with_cast())
        .given(vec![room_created(ROOM, ALICE), member_left(ALICE)])
        .when(join(ALICE))
        .then_expect_events(vec![member_joined(ALICE)]);
}

// --- SendMessage -----------------------------------------------------------------------------

#[test]
fn the_first_message_gets_seq_1() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(send(BOB, "hi all", "c-1"))
        .then_expect_events(vec![sent_now(1, BOB, "hi all", "c-1")]);
}

#[test]
fn the_next_message_continues_after_the_last_seq() {
    let mut given = room_with_alice_and_bob();
    given.extend([
        message_sent(1, ALICE, "a-1"),
        message_sent(2, BOB, "b-1"),
        message_sent(3, ALICE, "a-2"),
    ]);
    with(FakeDirectory::with_cast())
        .given(given)
        .when(send(BOB, "and then", "b-2"))
        .then_expect_events(vec![sent_now(4, BOB, "and then", "b-2")]);
}

#[test]
fn the_host_may_send() {
    with(FakeDirectory::with_cast())
        .given(vec![room_created(ROOM, ALICE)])
        .when(send(ALICE, "welcome", "w"))
        .then_expect_events(vec![sent_now(1, ALICE, "welcome", "w")]);
}

#[test]
fn a_non_member_cannot_send() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(send(CAROL, "let me in", "c-1"))
        .then_expect_error(RoomError::NotMember);
}

#[test]
fn an_invited_user_who_has_not_joined_cannot_send() {
    with(FakeDirectory::with_cast())
        .given(vec![room_created(ROOM, ALICE), member_invited(BOB, ALICE)])
        .when(send(BOB, "hello?", "c-1"))
        .then_expect_error(RoomError::NotMember);
}

#[test]
fn a_member_who_left_cannot_send() {
    let mut given = room_with_alice_and_bob();
    given.extend([message_sent(1, BOB, "b-1"), member_left(BOB)]);
    with(FakeDirectory::with_cast())
        .given(given)
        .when(send(BOB, "one more thing", "b-2"))
        .then_expect_error(RoomError::NotMember);
}

#[test]
fn membership_is_checked_before_the_body() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(send(CAROL, "", "c-1"))
        .then_expect_error(RoomError::NotMember);
}

#[test]
fn sending_to_a_room_that_was_never_created_is_refused() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(send(ALICE, "hello", "c-1"))
        .then_expect_error(RoomError::UnknownRoom);
}

#[test]
fn an_empty_body_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(send(BOB, "", "c-1"))
        .then_expect_error(RoomError::InvalidBody(ValueError::BodyEmpty));
}

#[test]
fn a_whitespace_only_body_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(send(BOB, " \t\r\n\u{3000} ", "c-1"))
        .then_expect_error(RoomError::InvalidBody(ValueError::BodyBlank));
}

#[test]
fn a_body_of_4001_characters_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(send(BOB, &"x".repeat(4001), "c-1"))
        .then_expect_error(RoomError::InvalidBody(ValueError::BodyTooLong {
            max: 4000,
            len: 4001,
        }));
}

#[test]
fn a_body_of_4000_emoji_is_accepted() {
    let text = "🦀".repeat(4000);
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(send(BOB, &text, "c-1"))
        .then_expect_events(vec![sent_now(1, BOB, &text, "c-1")]);
}

#[test]
fn an_empty_client_msg_id_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(send(BOB, "hello", ""))
        .then_expect_error(RoomError::InvalidClientMsgId(
            ValueError::ClientMsgIdLength {
                min: 1,
                max: 64,
                len: 0,
            },
        ));
}

#[test]
fn a_client_msg_id_of_65_characters_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(send(BOB, "hello", &"k".repeat(65)))
        .then_expect_error(RoomError::InvalidClientMsgId(
            ValueError::ClientMsgIdLength {
                min: 1,
                max: 64,
                len: 65,
            },
        ));
}

#[test]
fn a_repeated_client_msg_id_from_the_same_sender_yields_no_events() {
    let mut given = room_with_alice_and_bob();
    given.extend([message_sent(1, BOB, "c-1"), message_sent(2, ALICE, "a-1")]);
    with(FakeDirectory::with_cast())
        .given(given)
        .when(send(BOB, "a different body this time", "c-1"))
        .then_expect_events(vec![]);
}

#[test]
fn a_repeat_within_the_window_is_answered_without_asking_the_service() {
    let mut given = room_with_alice_and_bob();
    given.push(message_sent(1, BOB, "c-1"));
    with(FakeDirectory::failing())
        .given(given)
        .when(send(BOB, "hello", "c-1"))
        .then_expect_events(vec![]);
}

#[test]
fn the_same_client_msg_id_from_a_different_sender_is_a_new_message() {
    let mut given = room_with_alice_and_bob();
    given.push(message_sent(1, BOB, "c-1"));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(send(ALICE, "me too", "c-1"))
        .then_expect_events(vec![sent_now(2, ALICE, "me too", "c-1")]);
}

#[test]
fn a_client_msg_id_still_inside_the_window_is_a_repeat_even_if_the_service_forgot_it() {
    // The oldest message plus IDEMPOTENCY_WINDOW - 1 later ones: exactly a full window.
    let mut given = room_with_alice_and_bob();
    given.push(message_sent(1, BOB, "old"));
    given.extend(bulk_messages(2, IDEMPOTENCY_WINDOW - 1, ALICE));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(send(BOB, "hello", "old"))
        .then_expect_events(vec![]);
}

#[test]
fn a_client_msg_id_pushed_out_by_exactly_a_window_of_later_messages_is_new_to_the_room() {
    let mut given = room_with_alice_and_bob();
    given.push(message_sent(1, BOB, "old"));
    given.extend(bulk_messages(2, IDEMPOTENCY_WINDOW, ALICE));
    let next = IDEMPOTENCY_WINDOW as u64 + 2;
    with(FakeDirectory::with_cast())
        .given(given)
        .when(send(BOB, "hello", "old"))
        .then_expect_events(vec![sent_now(next, BOB, "hello", "old")]);
}

#[test]
/// The room forgets keys older than its window; the event store's unique key on (room,
/// sender, clientMsgId) refuses such a repeat, and the command layer answers with the
/// original (tested end to end in the server's `tests/event_store.rs`).
fn a_client_msg_id_older_than_the_window_is_new_to_the_room() {
    let mut given = room_with_alice_and_bob();
    given.push(message_sent(1, BOB, "old"));
    given.extend(bulk_messages(2, PAST_THE_WINDOW, ALICE));
    let next = PAST_THE_WINDOW as u64 + 2;
    with(FakeDirectory::with_cast())
        .given(given)
        .when(send(BOB, "hello", "old"))
        .then_expect_events(vec![sent_now(next, BOB, "hello", "old")]);
}

#[test]
fn a_client_msg_id_another_sender_used_is_not_a_repeat() {
    let mut given = room_with_alice_and_bob();
    given.push(message_sent(1, ALICE, "c-1"));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(send(BOB, "hello", "c-1"))
        .then_expect_events(vec![sent_now(2, BOB, "hello", "c-1")]);
}

#[test]
fn sending_a_message_asks_no_lookup() {
    // Even a directory that fails every lookup: a warm room accepts a message from its
    // own state alone.
    with(FakeDirectory::failing())
        .given(room_with_alice_and_bob())
        .when(send(BOB, "hello", "c-1"))
        .then_expect_events(vec![sent_now(1, BOB, "hello", "c-1")]);
}

#[test]
fn a_room_remembers_the_last_seq_and_recent_messages_by_sender_and_client_msg_id() {
    let mut events = room_with_alice_and_bob();
    events.extend([message_sent(1, BOB, "c-1"), message_sent(2, ALICE, "c-1")]);
    let room = replay(events);

    assert_eq!(room.last_seq(), MessageSeq(2));
    let recent = room
        .recent_message(BOB, &client_msg_id("c-1"))
        .expect("remembered");
    assert_eq!(
        (recent.sender, recent.seq, recent.message_id),
        (BOB, MessageSeq(1), message_id(1))
    );
    assert!(room.recent_message(CAROL, &client_msg_id("c-1")).is_none());
}

#[test]
fn a_room_remembers_at_most_a_window_of_recent_messages() {
    let mut events = room_with_alice_and_bob();
    events.extend(bulk_messages(1, PAST_THE_WINDOW, ALICE));
    let room = replay(events);

    assert!(room
        .recent_message(ALICE, &client_msg_id("bulk-1"))
        .is_none());
    assert!(room
        .recent_message(ALICE, &client_msg_id("bulk-2"))
        .is_some());
    let last = format!("bulk-{PAST_THE_WINDOW}");
    assert!(room.recent_message(ALICE, &client_msg_id(&last)).is_some());
}

// --- Replies ---------------------------------------------------------------------------------

fn room_with_messages() -> Vec<RoomEvent> {
    let mut given = room_with_alice_and_bob();
    given.extend([message_sent(1, ALICE, "a-1"), message_sent(2, BOB, "b-1")]);
    given
}

#[test]
fn a_reply_names_an_earlier_message_of_the_room() {
    let RoomEvent::MessageSent {
        message_id,
        sender,
        body,
        client_msg_id,
        sent_at,
        ..
    } = sent_now(3, BOB, "yes", "b-2")
    else {
        unreachable!("sent_now builds a MessageSent")
    };
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(reply(BOB, "yes", "b-2", 1))
        .then_expect_events(vec![RoomEvent::MessageSent {
            message_id,
            seq: MessageSeq(3),
            sender,
            body,
            client_msg_id,
            sent_at,
            reply_to: Some(MessageSeq(1)),
        }]);
}

#[test]
fn a_reply_to_a_seq_the_room_has_not_reached_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(reply(BOB, "yes", "b-2", 3))
        .then_expect_error(RoomError::InvalidReplyTo(MessageSeq(3)));
}

#[test]
fn a_reply_to_seq_0_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(reply(BOB, "yes", "b-2", 0))
        .then_expect_error(RoomError::InvalidReplyTo(MessageSeq(0)));
}

// --- EditMessage -----------------------------------------------------------------------------

#[test]
fn the_sender_may_edit_their_message() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(edit(BOB, 2, "fixed"))
        .then_expect_events(vec![edited(2, BOB, "fixed")]);
}

#[test]
fn editing_someone_elses_message_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(edit(BOB, 1, "mine now"))
        .then_expect_error(RoomError::NotSender);
}

#[test]
fn the_host_may_not_edit_a_members_message() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(edit(ALICE, 2, "rewritten"))
        .then_expect_error(RoomError::NotSender);
}

#[test]
fn an_edit_follows_the_body_rules() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(edit(BOB, 2, "   "))
        .then_expect_error(RoomError::InvalidBody(ValueError::BodyBlank));
}

#[test]
fn editing_a_deleted_message_is_refused() {
    let mut given = room_with_messages();
    given.push(deleted(2, BOB));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(edit(BOB, 2, "back"))
        .then_expect_error(RoomError::MessageDeleted(MessageSeq(2)));
}

#[test]
fn editing_a_message_that_does_not_exist_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(edit(BOB, 3, "ghost"))
        .then_expect_error(RoomError::UnknownMessage(MessageSeq(3)));
}

#[test]
fn a_sender_who_left_cannot_edit() {
    let mut given = room_with_messages();
    given.push(member_left(BOB));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(edit(BOB, 2, "late"))
        .then_expect_error(RoomError::NotMember);
}

#[test]
fn the_sender_of_a_message_older_than_the_window_comes_from_the_store() {
    let mut given = room_with_alice_and_bob();
    given.push(message_sent(1, BOB, "old"));
    given.extend(bulk_messages(2, PAST_THE_WINDOW, ALICE));
    with(FakeDirectory::with_cast().with_message(1, BOB))
        .given(given.clone())
        .when(edit(BOB, 1, "still mine"))
        .then_expect_events(vec![edited(1, BOB, "still mine")]);
    with(FakeDirectory::with_cast().with_message(1, BOB))
        .given(given)
        .when(edit(ALICE, 1, "not hers"))
        .then_expect_error(RoomError::NotSender);
}

#[test]
fn an_old_message_the_store_cannot_name_yet_is_a_service_error() {
    let mut given = room_with_alice_and_bob();
    given.push(message_sent(1, BOB, "old"));
    given.extend(bulk_messages(2, PAST_THE_WINDOW, ALICE));
    let result = with(FakeDirectory::with_cast())
        .given(given)
        .when(edit(BOB, 1, "x"))
        .inspect_result();
    assert!(matches!(result, Err(RoomError::Service(_))), "{result:?}");
}

// --- DeleteMessage ---------------------------------------------------------------------------

#[test]
fn the_sender_may_delete_their_message() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(delete(BOB, 2))
        .then_expect_events(vec![deleted(2, BOB)]);
}

#[test]
fn the_host_may_delete_any_message() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(delete(ALICE, 2))
        .then_expect_events(vec![deleted(2, ALICE)]);
}

#[test]
fn a_member_may_not_delete_someone_elses_message() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(delete(BOB, 1))
        .then_expect_error(RoomError::NotAllowed);
}

#[test]
fn a_host_who_left_may_not_delete_others_messages() {
    let mut given = room_with_messages();
    given.push(member_left(ALICE));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(delete(ALICE, 2))
        .then_expect_error(RoomError::NotAllowed);
}

#[test]
fn a_sender_who_left_may_still_delete_their_message() {
    let mut given = room_with_messages();
    given.push(member_left(BOB));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(delete(BOB, 2))
        .then_expect_events(vec![deleted(2, BOB)]);
}

#[test]
fn deleting_twice_is_refused() {
    let mut given = room_with_messages();
    given.push(deleted(2, BOB));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(delete(BOB, 2))
        .then_expect_error(RoomError::MessageDeleted(MessageSeq(2)));
}

#[test]
fn deleting_a_message_that_does_not_exist_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(delete(ALICE, 0))
        .then_expect_error(RoomError::UnknownMessage(MessageSeq(0)));
}

#[test]
fn deleting_in_a_room_that_was_never_created_is_refused() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(delete(ALICE, 1))
        .then_expect_error(RoomError::UnknownRoom);
}

// --- Reactions -------------------------------------------------------------------------------

#[test]
fn a_member_may_react() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(react(BOB, 1, "👍"))
        .then_expect_events(vec![reaction_added(1, BOB, "👍")]);
}

#[test]
fn reacting_twice_with_the_same_emoji_is_a_no_op() {
    let mut given = room_with_messages();
    given.push(reaction_added(1, BOB, "👍"));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(react(BOB, 1, "👍"))
        .then_expect_events(vec![]);
}

#[test]
fn another_member_may_add_the_same_emoji() {
    let mut given = room_with_messages();
    given.push(reaction_added(1, BOB, "👍"));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(react(ALICE, 1, "👍"))
        .then_expect_events(vec![reaction_added(1, ALICE, "👍")]);
}

#[test]
fn taking_back_a_reaction_records_reaction_removed() {
    let mut given = room_with_messages();
    given.push(reaction_added(1, BOB, "🎉"));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(unreact(BOB, 1, "🎉"))
        .then_expect_events(vec![reaction_removed(1, BOB, "🎉")]);
}

#[test]
fn taking_back_a_reaction_never_given_is_a_no_op() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(unreact(BOB, 1, "🎉"))
        .then_expect_events(vec![]);
}

#[test]
fn an_emoji_of_17_characters_is_refused() {
    let result = with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(react(BOB, 1, &"a".repeat(17)))
        .inspect_result();
    assert!(
        matches!(
            result,
            Err(RoomError::InvalidEmoji(ValueError::Emoji { .. }))
        ),
        "{result:?}"
    );
}

#[test]
fn an_empty_or_spaced_emoji_is_refused() {
    for bad in ["", "a b", "\n"] {
        let result = with(FakeDirectory::with_cast())
            .given(room_with_messages())
            .when(react(BOB, 1, bad))
            .inspect_result();
        assert!(
            matches!(result, Err(RoomError::InvalidEmoji(_))),
            "{bad:?}: {result:?}"
        );
    }
}

#[test]
fn an_emoji_of_16_characters_with_modifiers_is_accepted() {
    let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦"; // 7 scalar values
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(react(BOB, 1, family))
        .then_expect_events(vec![reaction_added(1, BOB, family)]);
    let sixteen = "x".repeat(16);
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(react(BOB, 1, &sixteen))
        .then_expect_events(vec![reaction_added(1, BOB, &sixteen)]);
}

#[test]
fn a_non_member_cannot_react() {
    with(FakeDirectory::with_cast())
        .given(room_with_messages())
        .when(react(CAROL, 1, "👍"))
        .then_expect_error(RoomError::NotMember);
}

#[test]
fn reacting_to_a_deleted_message_is_refused() {
    let mut given = room_with_messages();
    given.push(deleted(1, ALICE));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(react(BOB, 1, "👍"))
        .then_expect_error(RoomError::MessageDeleted(MessageSeq(1)));
}

#[test]
fn a_deletion_drops_the_messages_reactions_and_is_remembered() {
    let mut given = room_with_messages();
    given.extend([reaction_added(1, BOB, "👍"), deleted(1, ALICE)]);
    let room = replay(given);
    assert!(room.is_deleted(MessageSeq(1)));
    assert!(!room.is_deleted(MessageSeq(2)));
}

#[test]
fn message_changes_ask_no_lookup_for_recent_messages() {
    // The failing directory would turn any lookup into a service error.
    with(FakeDirectory::failing())
        .given(room_with_messages())
        .when(edit(BOB, 2, "ok"))
        .then_expect_events(vec![edited(2, BOB, "ok")]);
    with(FakeDirectory::failing())
        .given(room_with_messages())
        .when(delete(ALICE, 1))
        .then_expect_events(vec![deleted(1, ALICE)]);
}

// --- Invite ----------------------------------------------------------------------------------

#[test]
fn a_member_may_invite_a_registered_user() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(invite(BOB, CAROL))
        .then_expect_events(vec![member_invited(CAROL, BOB)]);
}

#[test]
fn inviting_a_member_or_an_invitee_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(invite(ALICE, BOB))
        .then_expect_error(RoomError::AlreadyMember);
    let mut given = room_with_alice_and_bob();
    given.push(member_invited(CAROL, ALICE));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(invite(BOB, CAROL))
        .then_expect_error(RoomError::AlreadyInvited);
}

#[test]
fn a_non_member_cannot_invite() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(invite(CAROL, DAVE))
        .then_expect_error(RoomError::NotMember);
}

#[test]
fn inviting_an_unregistered_user_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(invite(ALICE, MALLORY))
        .then_expect_error(RoomError::UnknownParticipant(MALLORY));
}

// --- UpdateRoom ------------------------------------------------------------------------------

#[test]
fn the_host_may_rename_the_room_and_set_its_topic() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(update(ALICE, Some("lounge"), Some("all things")))
        .then_expect_events(vec![updated(ALICE, Some("lounge"), Some("all things"))]);
}

#[test]
fn only_what_changes_is_recorded_and_nothing_new_is_no_event() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(update(ALICE, Some(ROOM_NAME), Some("new topic")))
        .then_expect_events(vec![updated(ALICE, None, Some("new topic"))]);
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(update(ALICE, Some(ROOM_NAME), Some("")))
        .then_expect_events(vec![]);
}

#[test]
fn a_plain_member_may_not_change_the_room() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(update(BOB, Some("mine"), None))
        .then_expect_error(RoomError::NotModerator);
}

#[test]
fn a_topic_of_501_characters_or_a_blank_name_is_refused() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(update(ALICE, None, Some(&"t".repeat(501))))
        .then_expect_error(RoomError::InvalidTopic(ValueError::TopicTooLong {
            max: 500,
            len: 501,
        }));
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(update(ALICE, Some("  "), None))
        .then_expect_error(RoomError::InvalidName(ValueError::RoomNameBlank));
}

#[test]
fn an_empty_topic_clears_it() {
    let mut given = room_with_alice_and_bob();
    given.push(updated(ALICE, Some("lounge"), Some("set")));
    given.push(updated(ALICE, None, Some("")));
    let room = replay(given);
    assert_eq!(room.topic(), None);
    assert_eq!(room.name().map(|n| n.as_str()), Some("lounge"));
}
