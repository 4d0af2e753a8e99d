-- The read model's (room, sender, clientMsgId) index served a lookup nothing calls: a
-- repeated clientMsgId is answered by the room's window and, past it, by the event store's
-- unique index on the same triple (`events_message_client_msg_id`), which stays. Dropping it
-- spares every projected message one B-tree insert with a text key.
DROP INDEX IF EXISTS messages_view_client_msg_id;
