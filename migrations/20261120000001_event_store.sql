-- The event store. The first seven columns are the ones postgres-es 0.5 names in its
-- INSERT and SELECT statements; the rest have defaults, so postgres-es never sees them.
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    -- Insertion id: taken at INSERT time, so NOT commit order (see ARCHITECTURE.md).
    id             bigint GENERATED ALWAYS AS IDENTITY,
    -- The writing transaction; the projector reads only below pg_snapshot_xmin.
    transaction_id xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at    timestamptz                  NOT NULL DEFAULT now(),
    -- The public global position, stamped by the single projector in commit order.
    position       bigint,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence),
    CONSTRAINT events_id_key UNIQUE (id),
    CONSTRAINT events_position_key UNIQUE (position)
);

-- The projector's work queue: events that have no position yet, in reading order.
CREATE INDEX events_unpositioned ON events (transaction_id, id) WHERE position IS NULL;

-- One message per (room, sender, clientMsgId), forever. The Room aggregate remembers only a
-- bounded window; this index is the longer-lived check behind it. postgres-es reports its
-- violation as an optimistic-lock conflict, which the command layer retries and resolves.
CREATE UNIQUE INDEX events_message_client_msg_id
    ON events (aggregate_id, (payload -> 'MessageSent' ->> 'sender'),
               (payload -> 'MessageSent' ->> 'client_msg_id'))
    WHERE aggregate_type = 'Room' AND event_type = 'MessageSent';

-- Usernames are unique across all users.
CREATE UNIQUE INDEX events_username
    ON events ((payload -> 'UserRegistered' ->> 'username'))
    WHERE aggregate_type = 'User' AND event_type = 'UserRegistered';

-- Wake listeners (the projector) when events are committed. NOTIFY is delivered at commit.
CREATE FUNCTION parley_notify_events() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('parley_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION parley_notify_events();

-- Aggregate snapshots: the state after applying every event up to last_sequence, exactly
-- once. One row per aggregate, only ever moved forward.
CREATE TABLE snapshots
(
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    last_sequence  bigint      NOT NULL CHECK (last_sequence > 0),
    payload        json        NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);
