-- Why mail was deferred in the last 24 hours, most frequent first.
SELECT r.domain, a.code, a.enhanced, a.text, count(*) AS times, datetime(max(a.started_at) / 1000, 'unixepoch') AS last_seen
  FROM attempt a JOIN recipient r ON r.id = a.recipient_id
 WHERE a.outcome = 'deferred' AND a.started_at > (strftime('%s', 'now') - 86400) * 1000
 GROUP BY 1, 2, 3, 4
 ORDER BY times DESC
 LIMIT 10;
