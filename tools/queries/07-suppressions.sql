-- The suppression list, newest first, and how many recipients each entry stopped.
SELECT s.address, s.source, s.reason, datetime(s.created_at / 1000, 'unixepoch') AS added,
       (SELECT count(*) FROM recipient r WHERE r.address = s.address AND r.state = 'suppressed') AS stopped
  FROM suppression s
 ORDER BY s.created_at DESC
 LIMIT 20;
