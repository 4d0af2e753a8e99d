-- Erasable text (docs/architecture.md, "Erasure").
--
-- A stored event never changes; what a person wrote, and who they are, must be erasable. So
-- the text of a `MessageSent` or `MessageEdited` (its body) and of a `UserRegistered` (the
-- username) lives beside the event, in `erasable`, and the payload holds the placeholder
-- `""` where the text goes. Every read of the log goes through
-- `event_payload(payload, erasable)`, which puts the text back. Deleting a message sets
-- `erasable` to NULL on its events, erasing a user on their registration and every message
-- they wrote, in the transaction that writes the `MessageDeleted` or `UserErased`; from then
-- on the payload reads with `""` everywhere: exports, `events` pages, time travel, rebuilds.
-- The log still shows that the message was sent, by whom and when, and that it was deleted.

ALTER TABLE events ADD COLUMN erasable text;

-- The payload as readers see it. The stored payload is serde_json's compact text, so the
-- placeholder is exactly `"body":""` or `"username":""` (a quote inside a JSON string is
-- escaped, so neither can match inside a value; no payload has both). Inlined by the
-- planner: one search and one replace per row that holds text.
CREATE FUNCTION event_payload(payload json, erasable text) RETURNS json
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE
               WHEN erasable IS NULL THEN payload
               WHEN strpos(payload::text, '"body":""') > 0
                   THEN replace(payload::text, '"body":""', '"body":' || to_json(erasable)::text)::json
               ELSE replace(payload::text, '"username":""',
                            '"username":' || to_json(erasable)::text)::json
           END;

-- Finding the events of message `seq` of a room, to erase them: only rows that still hold
-- text are indexed.
CREATE INDEX events_erasable_by_message
    ON events (aggregate_id, ((payload -> event_type ->> 'seq')::bigint))
    WHERE erasable IS NOT NULL;

-- Messages written before this migration: move their text out of the payload.
UPDATE events
   SET erasable = payload -> event_type ->> 'body',
       payload  = replace(payload::text,
                          '"body":' || to_json(payload -> event_type ->> 'body')::text,
                          '"body":""')::json
 WHERE aggregate_type = 'Room' AND event_type IN ('MessageSent', 'MessageEdited');

-- Usernames: unique among the users not erased, now on the column that holds them.
DROP INDEX events_username;
UPDATE events
   SET erasable = payload -> 'UserRegistered' ->> 'username',
       payload  = replace(payload::text,
                          '"username":' || to_json(payload -> 'UserRegistered' ->> 'username')::text,
                          '"username":""')::json
 WHERE aggregate_type = 'User' AND event_type = 'UserRegistered';
CREATE UNIQUE INDEX events_username ON events (erasable)
    WHERE aggregate_type = 'User' AND event_type = 'UserRegistered';

-- Any message whose text JSON-escapes differently from PostgreSQL's `to_json` (so the replace above
-- did not match): rewrite the payload structurally, keeping the placeholder compact.
UPDATE events
   SET payload = replace(jsonb_set(payload::jsonb, ARRAY [event_type, 'body'], '""')::text,
                         '"body": ""', '"body":""')::json
 WHERE erasable IS NOT NULL AND event_type <> 'UserRegistered'
   AND payload -> event_type ->> 'body' <> '';

-- History shows messages as they are now: edited, deleted (body ''), replies, reactions
-- ({emoji: [user id, …]} in the order given). `position` becomes the newest change's.
ALTER TABLE messages_view
    ADD COLUMN edited_at timestamptz,
    ADD COLUMN deleted   boolean NOT NULL DEFAULT false,
    ADD COLUMN reply_to  bigint,
    ADD COLUMN reactions jsonb   NOT NULL DEFAULT '{}',
    -- Edited, deleted or reacted to at least once: what `messageUpdates` replays.
    ADD COLUMN changed   boolean NOT NULL DEFAULT false;
CREATE INDEX messages_view_changes ON messages_view (room_id, position) WHERE changed;

-- A room's topic (`updateRoom`); NULL when none is set.
ALTER TABLE rooms_view ADD COLUMN topic text;
