-- Read models fed by the projector (parley-projections). Every table but read_cursors is a
-- pure function of the event log and can be truncated and replayed.

-- One row per projection: the global position it has applied up to, written in the same
-- transaction as its read-model changes.
CREATE TABLE projector_checkpoints
(
    projection text PRIMARY KEY,
    position   bigint      NOT NULL DEFAULT 0 CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projector_checkpoints (projection) VALUES ('users'), ('rooms'), ('messages');

-- Positioned events are read in position order (catch-up, replay, export).
-- (events_position_key, the unique constraint, already indexes position.)

-- User directory.
CREATE TABLE users_view
(
    user_id       uuid PRIMARY KEY,
    username      text        NOT NULL,
    password_hash text        NOT NULL,
    roles         text[]      NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL,
    position      bigint      NOT NULL,
    CONSTRAINT users_view_username_key UNIQUE (username)
);

-- Rooms: one row per room, with what the rooms list needs.
CREATE TABLE rooms_view
(
    room_id                uuid PRIMARY KEY,
    name                   text        NOT NULL,
    host                   uuid        NOT NULL,
    created_at             timestamptz NOT NULL,
    last_seq               bigint      NOT NULL DEFAULT 0,
    -- Position of the last message (or of the creation): "most recent activity first".
    last_activity_position bigint      NOT NULL,
    position               bigint      NOT NULL
);

-- Membership: members and invited users per room; rooms per user.
CREATE TABLE room_members
(
    room_id  uuid   NOT NULL,
    user_id  uuid   NOT NULL,
    state    text   NOT NULL CHECK (state IN ('member', 'invited')),
    position bigint NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_by_user ON room_members (user_id, state);

-- Message history, paged by seq within a room.
CREATE TABLE messages_view
(
    room_id       uuid        NOT NULL,
    seq           bigint      NOT NULL,
    message_id    uuid        NOT NULL,
    sender        uuid        NOT NULL,
    body          text        NOT NULL,
    client_msg_id text        NOT NULL,
    sent_at       timestamptz NOT NULL,
    position      bigint      NOT NULL,
    PRIMARY KEY (room_id, seq)
);
-- The idempotency lookup (room, sender, clientMsgId) -> message.
CREATE UNIQUE INDEX messages_view_client_msg_id ON messages_view (room_id, sender, client_msg_id);

-- Per-member read cursors (markRead). Not derived from events alone: markRead writes here
-- directly, and the projector only ever moves a cursor forward (a sender has read their own
-- message; a new member starts at the room's last message). Rebuilds keep this table.
CREATE TABLE read_cursors
(
    room_id       uuid        NOT NULL,
    user_id       uuid        NOT NULL,
    last_read_seq bigint      NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);
