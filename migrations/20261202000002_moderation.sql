-- Visibility, roles and bans (docs/architecture.md, "Rooms and moderation").
--
-- Every room so far is public; every membership so far is a plain member's or an
-- invitation. A member's role is `moderator` or `member` here; the host is
-- `rooms_view.host` (there is one, and the role can change hands). A banned user keeps a
-- `banned` row, so a room's members, invitees and bans are one table read.

ALTER TABLE rooms_view
    ADD COLUMN visibility text NOT NULL DEFAULT 'public'
        CHECK (visibility IN ('public', 'private', 'direct'));

ALTER TABLE room_members
    ADD COLUMN role text NOT NULL DEFAULT 'member' CHECK (role IN ('moderator', 'member')),
    DROP CONSTRAINT room_members_state_check,
    ADD CONSTRAINT room_members_state_check CHECK (state IN ('member', 'invited', 'banned'));

-- `publicRooms`: public rooms, most recent activity first, paged by keyset.
CREATE INDEX rooms_view_public ON rooms_view (last_activity_position DESC, room_id DESC)
    WHERE visibility = 'public';

-- `search`: full-text over message bodies. The `simple` configuration (lower-cased words, no
-- stemming, no stop words) behaves the same for every language people chat in. A deleted
-- or erased message's body is '' in this table, so its words leave the index with it.
ALTER TABLE messages_view
    ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED;
CREATE INDEX messages_view_search ON messages_view USING gin (search);
