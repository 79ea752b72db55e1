-- One append-only index for the arrival time and the Message-ID.
--
-- message_header_message_id indexed a random key: every accepted message
-- wrote a leaf page somewhere in it, as many WAL frames as the message's own
-- body (7.3 of about 45 frames per commit at 20 sessions). Keyed by
-- received_at first, new entries land at the end, next to each other, and
-- the index still holds every Message-ID: a lookup by Message-ID scans this
-- index alone (it covers `id`), never the table with its bodies. Write it as
--     SELECT id FROM message WHERE header_message_id = ?
-- (or let `tern history --message-id` do it); a time range in the same
-- WHERE narrows the scan. Time-range queries use the leading column as they
-- used the old message_received_at.

DROP INDEX message_header_message_id;
DROP INDEX message_received_at;
CREATE INDEX message_received_at ON message (received_at, header_message_id);
