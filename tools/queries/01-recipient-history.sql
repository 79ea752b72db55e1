-- What happened to mail for one address: every message, its state, the last reply.
SELECT queue_id, recipient, state, attempts, received, last_attempt, final_code AS code, final_enhanced AS status,
       final_text AS reply, mx_host, seconds_to_deliver AS secs
  FROM delivery_history
 WHERE recipient = 'temp1@example.net'
 ORDER BY received_at DESC;
