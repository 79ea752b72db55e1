-- Failed attempts in the last 7 days by category (invalid_recipient, mailbox_full, rate_limit, reputation, …; docs/shaping.md).
SELECT coalesce(category, '-') AS category, outcome, count(*) AS attempts, count(DISTINCT recipient_id) AS recipients
  FROM attempt
 WHERE outcome <> 'delivered' AND started_at > (strftime('%s', 'now') - 7 * 86400) * 1000
 GROUP BY 1, 2
 ORDER BY attempts DESC;
