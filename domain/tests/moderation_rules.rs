//! Given/when/then rules of the `Room` aggregate for visibility (public, private, direct),
//! roles and moderation (kick, ban, unban).

mod support;

use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use parley_domain::{Room, RoomError, RoomEvent, RoomId, RoomRole, RoomVisibility, ValueError};
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

/// ALICE hosts `ROOM` (public); BOB is a moderator; CAROL is a member.
fn moderated_room() -> Vec<RoomEvent> {
    vec![
        room_created(ROOM, ALICE),
        member_joined(BOB),
        member_joined(CAROL),
        role_changed(BOB, RoomRole::Moderator, ALICE),
    ]
}

/// ALICE hosts the PRIVATE `ROOM`; BOB is a member.
fn private_room() -> Vec<RoomEvent> {
    vec![
        private_room_created(ROOM, ALICE),
        member_invited(BOB, ALICE),
        member_joined(BOB),
    ]
}

// --- Visibility ------------------------------------------------------------------------------

#[test]
fn a_private_room_records_its_visibility() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(create_private_room(ALICE, vec![BOB]))
        .then_expect_events(vec![
            private_room_created(ROOM, ALICE),
            member_invited(BOB, ALICE),
        ]);
}

#[test]
fn a_direct_room_is_not_created_with_create_room() {
    let mut command = create_room(ALICE, ROOM_NAME, vec![]);
    if let parley_domain::RoomCommand::CreateRoom { visibility, .. } = &mut command {
        *visibility = RoomVisibility::Direct;
    }
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(command)
        .then_expect_error(RoomError::DirectNeedsPeer);
}

#[test]
fn nobody_joins_a_private_room_uninvited() {
    with(FakeDirectory::with_cast())
        .given(private_room())
        .when(join(CAROL))
        .then_expect_error(RoomError::NotInvited);
}

#[test]
fn an_invited_user_joins_a_private_room() {
    let mut given = private_room();
    given.push(member_invited(CAROL, ALICE));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(join(CAROL))
        .then_expect_events(vec![member_joined(CAROL)]);
}

#[test]
fn a_plain_member_may_not_invite_to_a_private_room_but_its_moderators_may() {
    with(FakeDirectory::with_cast())
        .given(private_room())
        .when(invite(BOB, CAROL))
        .then_expect_error(RoomError::NotModerator);
    let mut given = private_room();
    given.push(role_changed(BOB, RoomRole::Moderator, ALICE));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(invite(BOB, CAROL))
        .then_expect_events(vec![member_invited(CAROL, BOB)]);
}

// --- Direct rooms ----------------------------------------------------------------------------

#[test]
fn a_direct_rooms_id_is_the_same_for_either_user_and_differs_per_pair() {
    assert_eq!(RoomId::direct(ALICE, BOB), RoomId::direct(BOB, ALICE));
    assert_ne!(RoomId::direct(ALICE, BOB), RoomId::direct(ALICE, CAROL));
    assert_ne!(RoomId::direct(ALICE, BOB), RoomId::direct(BOB, CAROL));
}

#[test]
fn opening_a_direct_room_the_first_time_creates_it_with_both_users_as_members() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(open_direct(ALICE, BOB))
        .then_expect_events(direct_opened(ALICE, BOB));
    let room = replay(direct_opened(ALICE, BOB));
    assert_eq!(room.visibility(), RoomVisibility::Direct);
    assert!(room.is_member(ALICE) && room.is_member(BOB));
    assert_eq!(
        room.role(ALICE),
        Some(RoomRole::Member),
        "nobody hosts a direct room"
    );
}

#[test]
fn opening_an_open_direct_room_again_from_either_side_changes_nothing() {
    for (by, peer) in [(ALICE, BOB), (BOB, ALICE)] {
        with(FakeDirectory::with_cast())
            .given(direct_opened(ALICE, BOB))
            .when(open_direct(by, peer))
            .then_expect_events(vec![]);
    }
}

#[test]
fn opening_a_direct_room_one_left_brings_one_back() {
    let mut given = direct_opened(ALICE, BOB);
    given.push(member_left(BOB));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(open_direct(BOB, ALICE))
        .then_expect_events(vec![member_joined(BOB)]);
}

#[test]
fn nobody_else_joins_or_is_invited_to_a_direct_room_and_nobody_moderates_it() {
    for command in [
        join(CAROL),
        invite(ALICE, CAROL),
        kick(ALICE, BOB),
        ban(ALICE, BOB, None),
        set_role(ALICE, BOB, RoomRole::Moderator),
    ] {
        with(FakeDirectory::with_cast())
            .given(direct_opened(ALICE, BOB))
            .when(command)
            .then_expect_error(RoomError::DirectRoom);
    }
}

#[test]
fn in_a_direct_room_only_the_sender_deletes_a_message() {
    let mut given = direct_opened(ALICE, BOB);
    given.push(message_sent(1, BOB, "c1"));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(delete(ALICE, 1))
        .then_expect_error(RoomError::NotAllowed);
}

#[test]
fn either_user_of_a_direct_room_sets_its_topic() {
    with(FakeDirectory::with_cast())
        .given(direct_opened(ALICE, BOB))
        .when(update(BOB, None, Some("plans")))
        .then_expect_events(vec![updated(BOB, None, Some("plans"))]);
}

#[test]
fn a_direct_room_is_between_two_different_registered_users() {
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(open_direct(ALICE, ALICE))
        .then_expect_error(RoomError::DirectWithSelf);
    with(FakeDirectory::with_cast())
        .given_no_previous_events()
        .when(open_direct(ALICE, MALLORY))
        .then_expect_error(RoomError::UnknownParticipant(MALLORY));
}

// --- Roles -----------------------------------------------------------------------------------

#[test]
fn the_host_makes_a_member_a_moderator_once() {
    with(FakeDirectory::with_cast())
        .given(room_with_alice_and_bob())
        .when(set_role(ALICE, BOB, RoomRole::Moderator))
        .then_expect_events(vec![role_changed(BOB, RoomRole::Moderator, ALICE)]);
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(set_role(ALICE, BOB, RoomRole::Moderator))
        .then_expect_events(vec![]);
}

#[test]
fn only_the_host_sets_roles() {
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(set_role(BOB, CAROL, RoomRole::Moderator))
        .then_expect_error(RoomError::NotHost);
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(set_role(CAROL, CAROL, RoomRole::Moderator))
        .then_expect_error(RoomError::NotModerator);
}

#[test]
fn roles_are_for_members_other_than_oneself() {
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(set_role(ALICE, ALICE, RoomRole::Member))
        .then_expect_error(RoomError::NotToYourself);
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(set_role(ALICE, DAVE, RoomRole::Moderator))
        .then_expect_error(RoomError::TargetNotMember);
}

#[test]
fn handing_the_room_over_makes_the_old_host_a_moderator() {
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(set_role(ALICE, CAROL, RoomRole::Host))
        .then_expect_events(vec![
            role_changed(CAROL, RoomRole::Host, ALICE),
            role_changed(ALICE, RoomRole::Moderator, ALICE),
        ]);
    let mut events = moderated_room();
    events.push(role_changed(CAROL, RoomRole::Host, ALICE));
    events.push(role_changed(ALICE, RoomRole::Moderator, ALICE));
    let room = replay(events.clone());
    assert_eq!(room.host(), Some(CAROL));
    assert_eq!(room.role(ALICE), Some(RoomRole::Moderator));
    assert_eq!(room.role(CAROL), Some(RoomRole::Host));
    with(FakeDirectory::with_cast())
        .given(events)
        .when(set_role(ALICE, BOB, RoomRole::Member))
        .then_expect_error(RoomError::NotHost);
}

#[test]
fn a_moderator_who_leaves_comes_back_a_plain_member() {
    let mut events = moderated_room();
    events.push(member_left(BOB));
    events.push(member_joined(BOB));
    assert_eq!(replay(events).role(BOB), Some(RoomRole::Member));
}

// --- Kick ------------------------------------------------------------------------------------

#[test]
fn a_moderator_kicks_a_member_who_may_join_again() {
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(kick(BOB, CAROL))
        .then_expect_events(vec![kicked(CAROL, BOB)]);
    let mut events = moderated_room();
    events.push(kicked(CAROL, BOB));
    assert!(!replay(events.clone()).is_member(CAROL));
    with(FakeDirectory::with_cast())
        .given(events)
        .when(join(CAROL))
        .then_expect_events(vec![member_joined(CAROL)]);
}

#[test]
fn a_moderator_may_not_kick_the_host_or_another_moderator_but_the_host_may() {
    let mut given = moderated_room();
    given.push(role_changed(CAROL, RoomRole::Moderator, ALICE));
    with(FakeDirectory::with_cast())
        .given(given.clone())
        .when(kick(BOB, CAROL))
        .then_expect_error(RoomError::Outranked);
    with(FakeDirectory::with_cast())
        .given(given.clone())
        .when(kick(BOB, ALICE))
        .then_expect_error(RoomError::Outranked);
    with(FakeDirectory::with_cast())
        .given(given)
        .when(kick(ALICE, CAROL))
        .then_expect_events(vec![kicked(CAROL, ALICE)]);
}

#[test]
fn a_plain_member_kicks_nobody_and_nobody_kicks_themselves_or_a_non_member() {
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(kick(CAROL, BOB))
        .then_expect_error(RoomError::NotModerator);
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(kick(BOB, BOB))
        .then_expect_error(RoomError::NotToYourself);
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(kick(BOB, DAVE))
        .then_expect_error(RoomError::TargetNotMember);
}

#[test]
fn moderator_powers_need_membership() {
    let mut given = moderated_room();
    given.push(member_left(BOB));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(kick(BOB, CAROL))
        .then_expect_error(RoomError::NotMember);
}

#[test]
fn a_moderator_deletes_anyones_message_and_renames_the_room() {
    let mut given = moderated_room();
    given.push(message_sent(1, CAROL, "c1"));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(delete(BOB, 1))
        .then_expect_events(vec![deleted(1, BOB)]);
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(update(BOB, Some("renamed"), None))
        .then_expect_events(vec![updated(BOB, Some("renamed"), None)]);
}

// --- Ban -------------------------------------------------------------------------------------

#[test]
fn a_banned_member_is_out_and_stays_out_until_unbanned() {
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(ban(BOB, CAROL, Some("spam")))
        .then_expect_events(vec![banned(CAROL, BOB, Some("spam"))]);
    let mut events = moderated_room();
    events.push(banned(CAROL, BOB, Some("spam")));
    let room = replay(events.clone());
    assert!(!room.is_member(CAROL));
    assert!(room.banned().contains(&CAROL));
    with(FakeDirectory::with_cast())
        .given(events.clone())
        .when(join(CAROL))
        .then_expect_error(RoomError::Banned);
    with(FakeDirectory::with_cast())
        .given(events.clone())
        .when(invite(ALICE, CAROL))
        .then_expect_error(RoomError::Banned);
    with(FakeDirectory::with_cast())
        .given(events.clone())
        .when(unban(BOB, CAROL))
        .then_expect_events(vec![unbanned(CAROL, BOB)]);
    events.push(unbanned(CAROL, BOB));
    with(FakeDirectory::with_cast())
        .given(events)
        .when(join(CAROL))
        .then_expect_events(vec![member_joined(CAROL)]);
}

#[test]
fn a_user_outside_the_room_may_be_banned_ahead_and_loses_an_invitation() {
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(ban(ALICE, DAVE, None))
        .then_expect_events(vec![banned(DAVE, ALICE, None)]);
    let mut events = moderated_room();
    events.push(member_invited(DAVE, ALICE));
    events.push(banned(DAVE, ALICE, None));
    assert!(!replay(events).invited().contains(&DAVE));
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(ban(ALICE, MALLORY, None))
        .then_expect_error(RoomError::UnknownParticipant(MALLORY));
}

#[test]
fn banning_twice_or_unbanning_someone_not_banned_is_refused() {
    let mut events = moderated_room();
    events.push(banned(CAROL, BOB, None));
    with(FakeDirectory::with_cast())
        .given(events)
        .when(ban(ALICE, CAROL, None))
        .then_expect_error(RoomError::AlreadyBanned);
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(unban(ALICE, CAROL))
        .then_expect_error(RoomError::NotBanned);
}

#[test]
fn a_ban_ranks_like_a_kick_and_its_reason_has_a_limit() {
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(ban(BOB, ALICE, None))
        .then_expect_error(RoomError::Outranked);
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(ban(CAROL, BOB, None))
        .then_expect_error(RoomError::NotModerator);
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(ban(BOB, CAROL, Some(&"x".repeat(501))))
        .then_expect_error(RoomError::InvalidReason(ValueError::ReasonTooLong {
            max: 500,
            len: 501,
        }));
    // A blank reason is no reason.
    with(FakeDirectory::with_cast())
        .given(moderated_room())
        .when(ban(BOB, CAROL, Some("  ")))
        .then_expect_events(vec![banned(CAROL, BOB, None)]);
}

#[test]
fn a_banned_moderator_loses_the_role() {
    let mut events = moderated_room();
    events.push(banned(BOB, ALICE, None));
    events.push(unbanned(BOB, ALICE));
    events.push(member_joined(BOB));
    assert_eq!(replay(events).role(BOB), Some(RoomRole::Member));
}

// --- Serialization ---------------------------------------------------------------------------

#[test]
fn a_public_rooms_creation_serializes_as_it_did_before_visibility() {
    let json = serde_json::to_value(room_created(ROOM, ALICE)).expect("serializes");
    let created = &json["RoomCreated"];
    assert!(created.get("visibility").is_none(), "{json}");
    assert!(created.get("peer").is_none(), "{json}");
    let private = serde_json::to_value(private_room_created(ROOM, ALICE)).expect("serializes");
    assert_eq!(private["RoomCreated"]["visibility"], "private");
}

// --- Blocking --------------------------------------------------------------------------------

#[test]
fn a_blocked_user_cannot_open_a_direct_room_with_the_blocker_but_the_blocker_can() {
    with(FakeDirectory::with_cast().with_block(BOB, ALICE))
        .given_no_previous_events()
        .when(open_direct(ALICE, BOB))
        .then_expect_error(RoomError::Blocked);
    let mut given = direct_opened(BOB, ALICE);
    given.push(member_left(ALICE));
    with(FakeDirectory::with_cast().with_block(BOB, ALICE))
        .given(given)
        .when(open_direct(ALICE, BOB))
        .then_expect_error(RoomError::Blocked);
    with(FakeDirectory::with_cast().with_block(BOB, ALICE))
        .given_no_previous_events()
        .when(open_direct(BOB, ALICE))
        .then_expect_events(direct_opened(BOB, ALICE));
}
