-- The full event log of one message, as the scheduler wrote it.
SELECT datetime(e.at / 1000, 'unixepoch') AS at, e.kind, r.address, e.detail
  FROM event e
  JOIN message m ON m.id = e.message_id
  LEFT JOIN recipient r ON r.id = e.recipient_id
 WHERE m.queue_id = (SELECT queue_id FROM delivery_history WHERE recipient = 'perm1@example.org' ORDER BY received_at LIMIT 1)
 ORDER BY e.at, e.id;
