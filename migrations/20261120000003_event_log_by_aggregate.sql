-- One aggregate's positioned events in position order: time travel (a room as of a
-- position replays that room's events up to it) and exports or `events` pages filtered by
-- aggregate. Unpositioned events are not part of the public log, so they are left out.
CREATE INDEX events_aggregate_position
    ON events (aggregate_type, aggregate_id, position)
    WHERE position IS NOT NULL;
