-- Global positions are given when an event is inserted, in commit order, instead of being
-- stamped afterwards by the projector (which rewrote every event row a second time).
--
-- The scheme (docs/architecture.md, "The global position"): one row, `log_head`, holds the
-- newest position given. A writing transaction takes its positions by updating that row
-- (`position = position + n`), which row-locks it until the transaction ends. So:
-- - positions are strictly increasing in commit order: the next writer can read the head
--   only once the previous one has committed (or rolled back);
-- - no gap: a transaction that rolls back also rolls back its head update, and the next
--   writer gets the same numbers;
-- - every snapshot sees a prefix: Postgres releases a transaction's locks only after its
--   commit is visible, so a reader that sees position p sees every position below p.
-- Parley's writer takes the head and inserts a whole batch in one statement; any other
-- INSERT that leaves `position` NULL gets one from the row trigger below, under the same lock.

CREATE TABLE log_head
(
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint NOT NULL CHECK (position >= 0)
);

-- Events written by an older version and not yet stamped by its projector: give them
-- positions in the order that projector would have used (every writer of that version has
-- stopped once this migration runs).
WITH head AS (SELECT coalesce(max(position), 0) AS base FROM events),
     todo AS (SELECT id, row_number() OVER (ORDER BY transaction_id, id) AS n
                FROM events WHERE position IS NULL)
UPDATE events e SET position = head.base + todo.n
  FROM head, todo
 WHERE e.id = todo.id;

INSERT INTO log_head (position) SELECT coalesce(max(position), 0) FROM events;

-- Positions for INSERTs that give none (fixtures, bulk loads, manual repairs). The first such
-- row of a transaction locks `log_head` (FOR UPDATE: held until the transaction ends, like
-- the writer's UPDATE); the rows count on in a transaction-local setting, and one UPDATE per
-- statement writes the new head back. So a bulk INSERT of a million rows updates the head
-- once, not a million times.
CREATE FUNCTION parley_next_position() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    given text := current_setting('parley.position', true);
    next  bigint;
BEGIN
    IF given IS NULL OR given = '' THEN
        SELECT position INTO next FROM log_head FOR UPDATE;
    ELSE
        next := given::bigint;
    END IF;
    next := next + 1;
    PERFORM set_config('parley.position', next::text, true);
    NEW.position := next;
    RETURN NEW;
END
$$;

CREATE FUNCTION parley_store_position() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    given text := current_setting('parley.position', true);
BEGIN
    IF given IS NOT NULL AND given <> '' THEN
        UPDATE log_head SET position = given::bigint WHERE position < given::bigint;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_position
    BEFORE INSERT ON events
    FOR EACH ROW
    WHEN (NEW.position IS NULL)
    EXECUTE FUNCTION parley_next_position();

CREATE TRIGGER events_position_head
    AFTER INSERT ON events
    FOR EACH STATEMENT
    EXECUTE FUNCTION parley_store_position();

-- Every event now has a position from the start.
ALTER TABLE events ALTER COLUMN position SET NOT NULL;

-- The projector's queue of unpositioned events and the insertion-id index served the old
-- stamping order only; each was one more index write per event.
DROP INDEX events_unpositioned;
ALTER TABLE events DROP CONSTRAINT events_id_key;

-- Other instances learn that the read models moved (read-your-writes waits on it).
-- The projector NOTIFYs 'parley_checkpoint' with the new position in its own transaction.
