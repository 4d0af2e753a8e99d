//! `schema.graphql` is the SDL the server exports; this test fails when they drift apart.
//! Regenerate with `PARLEY_UPDATE_SCHEMA=1 cargo test --test schema`.

#[test]
fn schema_graphql_matches_the_served_schema() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
    let served = parley::graphql::sdl();
    if std::env::var_os("PARLEY_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &served).expect("writing schema.graphql");
    }
    let checked_in = std::fs::read_to_string(&path).expect("reading schema.graphql");
    assert!(
        checked_in == served,
        "schema.graphql is out of date: run `PARLEY_UPDATE_SCHEMA=1 cargo test --test schema` and commit it"
    );
}

#[test]
fn the_schema_keeps_every_name_api_md_fixes() {
    let sdl = parley::graphql::sdl();
    for name in [
        "register(",
        "login(",
        "createRoom(",
        "joinRoom(",
        "leaveRoom(",
        "sendMessage(",
        "typing(",
        "markRead(",
        "me: User!",
        "user(",
        "rooms: [Room!]!",
        "room(",
        "messages(",
        "notices(",
        "type AuthPayload",
        "type MessagePage",
        "type Notice",
        "type TypingEvent",
        "enum NoticeKind",
        "ROOM_CREATED",
        "MEMBER_INVITED",
        "MEMBER_JOINED",
        "MEMBER_LEFT",
        "MEMBER_ONLINE",
        "MEMBER_OFFLINE",
        "ANNOUNCEMENT",
        "unreadCount: Int!",
        "online: [User!]!",
        "hasMore: Boolean!",
        "clientMsgId: String!",
        "isTyping: Boolean!",
        // Message lifecycle (API.md "message lifecycle, rooms, moderation, search").
        "replyTo: Int",
        "editMessage(",
        "deleteMessage(",
        "react(",
        "unreact(",
        "messageUpdates(",
        "eraseUser(",
        "invite(",
        "userByName(",
        "updateRoom(",
        "topic: String",
        "ROOM_UPDATED",
        "editedAt: DateTime",
        "deleted: Boolean!",
        "replyTo: Message",
        "reactions: [Reaction!]!",
        "type Reaction",
        "count: Int!",
        "mine: Boolean!",
        "position: Int!",
    ] {
        assert!(sdl.contains(name), "the schema lost {name:?}");
    }
}
