-- Who sent the most in the last hour, with how much of it is delivered.
SELECT m.mail_from AS sender, count(DISTINCT m.id) AS messages, count(*) AS recipients,
       sum(r.state = 'delivered') AS delivered, sum(r.state IN ('bounced', 'expired', 'suppressed')) AS failed
  FROM message m JOIN recipient r ON r.message_id = m.id
 WHERE m.received_at > (strftime('%s', 'now') - 3600) * 1000 AND m.origin <> 'dsn'
 GROUP BY 1
 ORDER BY recipients DESC
 LIMIT 10;
