//! Boundary cases of the validated values. Lengths count Unicode scalar values, not bytes.

use parley_domain::{
    ClientMsgId, MessageBody, MessageSeq, Password, RoomId, RoomName, UserId, Username, ValueError,
};

// --- Username --------------------------------------------------------------------------------

#[test]
fn a_username_of_3_or_32_lowercase_digits_or_underscores_is_accepted() {
    for s in ["abc", "a_1", "___", "007", &"z".repeat(32)] {
        assert_eq!(
            Username::parse(s).map(|u| u.as_str().to_owned()),
            Ok(s.to_owned())
        );
    }
}

#[test]
fn a_username_of_2_or_33_characters_is_refused() {
    for (s, len) in [("ab", 2), (&*"a".repeat(33), 33), ("", 0)] {
        assert_eq!(
            Username::parse(s),
            Err(ValueError::UsernameLength {
                min: 3,
                max: 32,
                len
            })
        );
    }
}

#[test]
fn a_username_length_counts_characters_not_bytes() {
    // Three characters, six bytes: the length rule passes, the character rule refuses.
    assert_eq!(
        Username::parse("äöü"),
        Err(ValueError::UsernameCharacter { found: 'ä' })
    );
}

#[test]
fn a_username_with_an_uppercase_letter_space_dash_or_accent_is_refused() {
    for (s, found) in [
        ("Alice", 'A'),
        ("aliCe", 'C'),
        ("al ice", ' '),
        ("al-ice", '-'),
        ("alicé", 'é'),
        ("al.ice", '.'),
    ] {
        assert_eq!(
            Username::parse(s),
            Err(ValueError::UsernameCharacter { found }),
            "{s:?}"
        );
    }
}

#[test]
fn a_username_displays_as_itself() {
    assert_eq!(Username::parse("alice_01").unwrap().to_string(), "alice_01");
}

// --- Password --------------------------------------------------------------------------------

#[test]
fn a_password_of_8_or_128_characters_is_accepted() {
    for s in ["12345678".to_owned(), "ß".repeat(128)] {
        assert_eq!(Password::parse(&s).unwrap().expose(), s);
    }
}

#[test]
fn a_password_of_7_or_129_characters_is_refused() {
    for (s, len) in [("1234567".to_owned(), 7), ("ß".repeat(129), 129)] {
        assert_eq!(
            Password::parse(&s),
            Err(ValueError::PasswordLength {
                min: 8,
                max: 128,
                len
            })
        );
    }
}

#[test]
fn a_password_is_never_printed_by_debug() {
    let password = Password::parse("hunter2hunter2").unwrap();
    let printed = format!("{password:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
}

// --- RoomName --------------------------------------------------------------------------------

#[test]
fn a_room_name_of_1_or_100_characters_is_accepted_untrimmed() {
    for s in ["x".to_owned(), "🦀".repeat(100), " padded ".to_owned()] {
        assert_eq!(RoomName::parse(&s).unwrap().as_str(), s);
    }
}

#[test]
fn an_empty_or_whitespace_only_room_name_is_blank() {
    for s in ["", " ", "\t\n", &" ".repeat(150)] {
        assert_eq!(RoomName::parse(s), Err(ValueError::RoomNameBlank), "{s:?}");
    }
}

#[test]
fn a_room_name_of_101_characters_is_too_long() {
    assert_eq!(
        RoomName::parse(&"🦀".repeat(101)),
        Err(ValueError::RoomNameTooLong { max: 100, len: 101 })
    );
}

// --- MessageBody -----------------------------------------------------------------------------

#[test]
fn a_body_of_4000_emoji_is_accepted() {
    let s = "😀".repeat(4000);
    assert_eq!(s.len(), 16_000);
    assert_eq!(MessageBody::parse(&s).unwrap().as_str(), s);
}

#[test]
fn a_body_of_4001_emoji_is_too_long() {
    assert_eq!(
        MessageBody::parse(&"😀".repeat(4001)),
        Err(ValueError::BodyTooLong {
            max: 4000,
            len: 4001
        })
    );
}

#[test]
fn a_body_of_one_character_surrounded_by_whitespace_is_accepted_untrimmed() {
    assert_eq!(MessageBody::parse("  .  ").unwrap().as_str(), "  .  ");
}

#[test]
fn an_empty_body_is_empty_and_a_whitespace_only_body_is_blank() {
    assert_eq!(MessageBody::parse(""), Err(ValueError::BodyEmpty));
    for s in [" ", "\n\t", "\u{00a0}\u{2003}", &" ".repeat(5000)] {
        assert_eq!(MessageBody::parse(s), Err(ValueError::BodyBlank), "{s:?}");
    }
}

// --- ClientMsgId -----------------------------------------------------------------------------

#[test]
fn a_client_msg_id_of_1_or_64_characters_is_accepted() {
    for s in ["k".to_owned(), "é".repeat(64), " ".to_owned()] {
        assert_eq!(ClientMsgId::parse(&s).unwrap().as_str(), s);
    }
}

#[test]
fn a_client_msg_id_of_0_or_65_characters_is_refused() {
    for (s, len) in [(String::new(), 0), ("é".repeat(65), 65)] {
        assert_eq!(
            ClientMsgId::parse(&s),
            Err(ValueError::ClientMsgIdLength {
                min: 1,
                max: 64,
                len
            })
        );
    }
}

// --- Ids -------------------------------------------------------------------------------------

#[test]
fn ids_parse_from_and_display_as_their_uuid_text() {
    let text = "01890a5d-ac96-774b-bcce-b302099a8057";
    assert_eq!(UserId::parse(text).unwrap().to_string(), text);
    assert_eq!(RoomId::parse(text).unwrap().to_string(), text);
    assert!(UserId::parse("not-a-uuid").is_err());
}

#[test]
fn fresh_ids_are_distinct() {
    assert_ne!(UserId::new(), UserId::new());
    assert_ne!(RoomId::default(), RoomId::default());
}

#[test]
fn a_seq_is_followed_by_the_next_integer() {
    assert_eq!(MessageSeq(0).next(), MessageSeq(1));
    assert_eq!(MessageSeq(41).next().to_string(), "42");
}

// --- Read back from events and snapshots ------------------------------------------------------

#[test]
fn a_value_reads_back_through_its_rules() {
    let name: RoomName = serde_json::from_str(r#""lobby""#).unwrap();
    assert_eq!(serde_json::to_string(&name).unwrap(), r#""lobby""#);
    let id: ClientMsgId = serde_json::from_str(r#""c-1""#).unwrap();
    assert_eq!(id.as_str(), "c-1");
    assert_eq!(serde_json::to_string(&id).unwrap(), r#""c-1""#);

    // What `parse` refuses, deserializing refuses too, with the rule's message.
    let blank = serde_json::from_str::<RoomName>(r#""   ""#).unwrap_err();
    assert!(blank.to_string().contains("blank"), "{blank}");
    let long = format!("\"{}\"", "x".repeat(65));
    assert!(serde_json::from_str::<ClientMsgId>(&long).is_err());
    assert!(serde_json::from_str::<ClientMsgId>(r#""""#).is_err());
    assert!(serde_json::from_str::<Username>(r#""Not Valid""#).is_err());
    assert!(serde_json::from_str::<MessageBody>(r#"" \n ""#).is_err());
    assert!(serde_json::from_str::<MessageBody>(&format!("\"{}\"", "b".repeat(4001))).is_err());
}

#[test]
fn an_erased_text_reads_back_as_its_placeholder() {
    // An erased username or body leaves "" in its event; the event must still load.
    let body: MessageBody = serde_json::from_str(r#""""#).unwrap();
    assert_eq!(body.as_str(), "");
    let username: Username = serde_json::from_str(r#""""#).unwrap();
    assert_eq!(username.as_str(), "");
    // Only the placeholder: any other invalid text is refused.
    assert!(serde_json::from_str::<Username>(r#""ab""#).is_err());
}
