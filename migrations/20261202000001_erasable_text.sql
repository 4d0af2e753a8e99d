-- Erasable message text (docs/architecture.md, "Erasure").
--
-- A stored event never changes; the text a person wrote must be erasable. So the text of a
-- `MessageSent` or `MessageEdited` lives beside the event, in `erasable`, and the payload
-- holds the placeholder `"body":""` where the text goes. Every read of the log goes through
-- `event_payload(payload, erasable)`, which puts the text back; deleting a message sets
-- `erasable` to NULL on its events (in the transaction that writes the `MessageDeleted`),
-- after which the payload reads with `"body":""` everywhere: exports, `events` pages, time
-- travel, rebuilds. The log still shows that the message was sent, by whom and when, and
-- that it was deleted.

ALTER TABLE events ADD COLUMN erasable text;

-- The payload as readers see it. The stored payload is serde_json's compact text, so the
-- placeholder is exactly `"body":""` (a quote inside a JSON string is escaped, so this
-- cannot match inside a value). Inlined by the planner: costs one text replace per message.
CREATE FUNCTION event_payload(payload json, erasable text) RETURNS json
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE
               WHEN erasable IS NULL THEN payload
               ELSE replace(payload::text, '"body":""', '"body":' || to_json(erasable)::text)::json
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

-- Any whose text JSON-escapes differently from PostgreSQL's `to_json` (so the replace above
-- did not match): rewrite the payload structurally, keeping the placeholder compact.
UPDATE events
   SET payload = replace(jsonb_set(payload::jsonb, ARRAY [event_type, 'body'], '""')::text,
                         '"body": ""', '"body":""')::json
 WHERE erasable IS NOT NULL AND payload -> event_type ->> 'body' <> '';

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
