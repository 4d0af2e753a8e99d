//! Given/when/then rules of the `User` aggregate.

mod support;

use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use parley_domain::{Role, User, UserError, ValueError};
use support::*;

fn with(directory: FakeDirectory) -> TestFramework<User> {
    TestFramework::<User>::with(directory.user_services())
}

fn registered_alice() -> Vec<parley_domain::UserEvent> {
    vec![user_registered(ALICE, "alice")]
}

// --- RegisterUser ----------------------------------------------------------------------------

#[test]
fn registering_a_new_user_records_user_registered() {
    with(FakeDirectory::empty())
        .given_no_previous_events()
        .when(register(ALICE, "alice", PASSWORD_HASH))
        .then_expect_events(vec![user_registered(ALICE, "alice")]);
}

#[test]
fn a_username_of_exactly_three_and_thirty_two_characters_is_accepted() {
    let shortest = "a_1";
    let longest = "abcdefghijklmnopqrstuvwxyz_01234";
    assert_eq!(longest.len(), 32);
    for name in [shortest, longest] {
        with(FakeDirectory::empty())
            .given_no_previous_events()
            .when(register(ALICE, name, PASSWORD_HASH))
            .then_expect_events(vec![user_registered(ALICE, name)]);
    }
}

#[test]
fn registering_an_already_registered_user_is_refused() {
    with(FakeDirectory::empty())
        .given(registered_alice())
        .when(register(ALICE, "alice_again", PASSWORD_HASH))
        .then_expect_error(UserError::AlreadyRegistered);
}

#[test]
fn a_username_of_two_characters_is_refused() {
    with(FakeDirectory::empty())
        .given_no_previous_events()
        .when(register(ALICE, "al", PASSWORD_HASH))
        .then_expect_error(UserError::InvalidUsername(ValueError::UsernameLength {
            min: 3,
            max: 32,
            len: 2,
        }));
}

#[test]
fn a_username_of_thirty_three_characters_is_refused() {
    with(FakeDirectory::empty())
        .given_no_previous_events()
        .when(register(ALICE, &"a".repeat(33), PASSWORD_HASH))
        .then_expect_error(UserError::InvalidUsername(ValueError::UsernameLength {
            min: 3,
            max: 32,
            len: 33,
        }));
}

#[test]
fn a_username_with_an_uppercase_letter_is_refused() {
    with(FakeDirectory::empty())
        .given_no_previous_events()
        .when(register(ALICE, "aLice", PASSWORD_HASH))
        .then_expect_error(UserError::InvalidUsername(ValueError::UsernameCharacter {
            found: 'L',
        }));
}

#[test]
fn a_username_with_a_dash_is_refused() {
    with(FakeDirectory::empty())
        .given_no_previous_events()
        .when(register(ALICE, "al-ice", PASSWORD_HASH))
        .then_expect_error(UserError::InvalidUsername(ValueError::UsernameCharacter {
            found: '-',
        }));
}

#[test]
fn an_empty_password_hash_is_refused() {
    with(FakeDirectory::empty())
        .given_no_previous_events()
        .when(register(ALICE, "alice", ""))
        .then_expect_error(UserError::MissingPasswordHash);
}

#[test]
fn a_whitespace_only_password_hash_is_refused() {
    with(FakeDirectory::empty())
        .given_no_previous_events()
        .when(register(ALICE, "alice", " \t\n"))
        .then_expect_error(UserError::MissingPasswordHash);
}

#[test]
fn a_username_another_user_registered_is_taken() {
    with(FakeDirectory::empty().with_taken_username("alice"))
        .given_no_previous_events()
        .when(register(ALICE, "alice", PASSWORD_HASH))
        .then_expect_error(UserError::UsernameTaken(username("alice")));
}

#[test]
fn a_failing_username_lookup_is_reported_as_a_service_error() {
    with(FakeDirectory::failing())
        .given_no_previous_events()
        .when(register(ALICE, "alice", PASSWORD_HASH))
        .then_expect_error(UserError::Service(service_error()));
}

#[test]
fn an_invalid_username_is_refused_before_any_lookup() {
    with(FakeDirectory::failing())
        .given_no_previous_events()
        .when(register(ALICE, "x", PASSWORD_HASH))
        .then_expect_error(UserError::InvalidUsername(ValueError::UsernameLength {
            min: 3,
            max: 32,
            len: 1,
        }));
}

// --- GrantRole -------------------------------------------------------------------------------

#[test]
fn granting_a_role_to_a_registered_user_records_role_granted() {
    with(FakeDirectory::empty())
        .given(registered_alice())
        .when(grant(Role::Admin))
        .then_expect_events(vec![role_granted(Role::Admin)]);
}

#[test]
fn granting_a_second_different_role_is_recorded() {
    with(FakeDirectory::empty())
        .given(vec![
            user_registered(ALICE, "alice"),
            role_granted(Role::Analyst),
        ])
        .when(grant(Role::Admin))
        .then_expect_events(vec![role_granted(Role::Admin)]);
}

#[test]
fn granting_a_role_to_an_unregistered_user_is_refused() {
    with(FakeDirectory::empty())
        .given_no_previous_events()
        .when(grant(Role::Analyst))
        .then_expect_error(UserError::UnknownUser);
}

#[test]
fn granting_a_role_the_user_already_has_is_refused() {
    with(FakeDirectory::empty())
        .given(vec![
            user_registered(ALICE, "alice"),
            role_granted(Role::Analyst),
        ])
        .when(grant(Role::Analyst))
        .then_expect_error(UserError::AlreadyHasRole(Role::Analyst));
}

// --- State -----------------------------------------------------------------------------------

#[test]
fn a_user_rebuilt_from_its_events_knows_its_id_username_and_roles() {
    let mut user = User::default();
    assert_eq!(user.id(), None);
    assert_eq!(user.username(), None);

    user.apply(user_registered(ALICE, "alice"));
    user.apply(role_granted(Role::Analyst));

    assert_eq!(user.id(), Some(ALICE));
    assert_eq!(user.username(), Some(&username("alice")));
    assert!(user.has_role(Role::Analyst));
    assert!(!user.has_role(Role::Admin));
}

#[test]
fn roles_parse_from_and_print_as_their_lower_case_names() {
    for role in [Role::Analyst, Role::Admin] {
        assert_eq!(Role::parse(role.as_str()), Some(role));
        assert_eq!(role.to_string(), role.as_str());
    }
    assert_eq!(Role::parse("Admin"), None);
    assert_eq!(Role::parse("root"), None);
}

// --- Announce --------------------------------------------------------------------------------

fn announce(text: &str) -> parley_domain::UserCommand {
    parley_domain::UserCommand::Announce {
        text: text.to_owned(),
        made_at: now(),
    }
}

fn admin_alice() -> Vec<parley_domain::UserEvent> {
    vec![user_registered(ALICE, "alice"), role_granted(Role::Admin)]
}

#[test]
fn an_admin_announcement_records_announcement_made() {
    with(FakeDirectory::empty())
        .given(admin_alice())
        .when(announce("all.service-check"))
        .then_expect_events(vec![parley_domain::UserEvent::AnnouncementMade {
            text: parley_domain::AnnouncementText::parse("all.service-check").unwrap(),
            made_at: now(),
        }]);
}

#[test]
fn an_announcement_by_a_user_who_is_not_admin_is_refused() {
    with(FakeDirectory::empty())
        .given(vec![
            user_registered(ALICE, "alice"),
            role_granted(Role::Analyst),
        ])
        .when(announce("hello"))
        .then_expect_error(UserError::NotAdmin);
}

#[test]
fn an_announcement_by_an_unknown_user_is_refused() {
    with(FakeDirectory::empty())
        .given_no_previous_events()
        .when(announce("hello"))
        .then_expect_error(UserError::UnknownUser);
}

#[test]
fn a_blank_or_over_long_announcement_is_refused() {
    with(FakeDirectory::empty())
        .given(admin_alice())
        .when(announce("  \n "))
        .then_expect_error(UserError::InvalidAnnouncement(
            ValueError::AnnouncementBlank,
        ));
    with(FakeDirectory::empty())
        .given(admin_alice())
        .when(announce(&"é".repeat(1001)))
        .then_expect_error(UserError::InvalidAnnouncement(
            ValueError::AnnouncementTooLong {
                max: 1000,
                len: 1001,
            },
        ));
}

#[test]
fn an_announcement_leaves_the_user_state_unchanged() {
    let mut user = User::default();
    for event in admin_alice() {
        user.apply(event);
    }
    let before = user.clone();
    user.apply(parley_domain::UserEvent::AnnouncementMade {
        text: parley_domain::AnnouncementText::parse("x").unwrap(),
        made_at: now(),
    });
    assert_eq!(user, before);
}

// --- EraseUser -------------------------------------------------------------------------------

fn erase(by: Option<parley_domain::UserId>) -> parley_domain::UserCommand {
    parley_domain::UserCommand::EraseUser {
        by,
        erased_at: now(),
    }
}

fn user_erased(by: Option<parley_domain::UserId>) -> parley_domain::UserEvent {
    parley_domain::UserEvent::UserErased {
        erased_by: by,
        erased_at: now(),
    }
}

#[test]
fn erasing_a_user_records_user_erased_with_who_asked() {
    with(FakeDirectory::empty())
        .given(registered_alice())
        .when(erase(Some(BOB)))
        .then_expect_events(vec![user_erased(Some(BOB))]);
    with(FakeDirectory::empty())
        .given(registered_alice())
        .when(erase(None))
        .then_expect_events(vec![user_erased(None)]);
}

#[test]
fn erasing_an_erased_user_is_a_no_op() {
    let mut given = registered_alice();
    given.push(user_erased(None));
    with(FakeDirectory::empty())
        .given(given)
        .when(erase(Some(BOB)))
        .then_expect_events(vec![]);
}

#[test]
fn erasing_an_unknown_user_is_refused() {
    with(FakeDirectory::empty())
        .given_no_previous_events()
        .when(erase(None))
        .then_expect_error(UserError::UnknownUser);
}

#[test]
fn an_erased_user_keeps_no_username() {
    let mut user = User::default();
    for event in [user_registered(ALICE, "alice"), user_erased(None)] {
        user.apply(event);
    }
    assert!(user.is_erased());
    assert_eq!(user.username(), None);
    assert_eq!(user.id(), Some(ALICE));
}

// --- BlockUser / UnblockUser -----------------------------------------------------------------

fn block(user: parley_domain::UserId) -> parley_domain::UserCommand {
    parley_domain::UserCommand::BlockUser { user }
}

fn unblock(user: parley_domain::UserId) -> parley_domain::UserCommand {
    parley_domain::UserCommand::UnblockUser { user }
}

fn blocked(user_id: parley_domain::UserId) -> parley_domain::UserEvent {
    parley_domain::UserEvent::UserBlocked { user_id }
}

#[test]
fn a_user_blocks_a_registered_user_once() {
    with(FakeDirectory::with_cast())
        .given(registered_alice())
        .when(block(BOB))
        .then_expect_events(vec![blocked(BOB)]);
    let mut given = registered_alice();
    given.push(blocked(BOB));
    with(FakeDirectory::with_cast())
        .given(given.clone())
        .when(block(BOB))
        .then_expect_events(vec![]);
    let mut state = User::default();
    for event in given {
        state.apply(event);
    }
    assert!(state.blocks(BOB) && !state.blocks(CAROL));
}

#[test]
fn nobody_blocks_themselves_or_an_unknown_user() {
    with(FakeDirectory::with_cast())
        .given(registered_alice())
        .when(block(ALICE))
        .then_expect_error(UserError::BlockSelf);
    with(FakeDirectory::with_cast())
        .given(registered_alice())
        .when(block(MALLORY))
        .then_expect_error(UserError::UnknownBlockee);
}

#[test]
fn unblocking_takes_a_block_back_and_is_a_no_op_otherwise() {
    let mut given = registered_alice();
    given.push(blocked(BOB));
    with(FakeDirectory::with_cast())
        .given(given)
        .when(unblock(BOB))
        .then_expect_events(vec![parley_domain::UserEvent::UserUnblocked {
            user_id: BOB,
        }]);
    with(FakeDirectory::with_cast())
        .given(registered_alice())
        .when(unblock(BOB))
        .then_expect_events(vec![]);
}
