-- Conditions without IN lists on the hot tables.
--
-- SQLite evaluates `x IN (a, b, …)` in a CHECK constraint or a partial
-- index's WHERE through an ephemeral table that it builds afresh for every
-- INSERT and UPDATE of a row. With the recipient row written twice per
-- delivery, that was about 20 µs of every recipient's 35 (sqlite3BtreeOpen
-- and Close showed in the profile). The same sets written as OR chains of
-- equalities cost a few comparisons.
--
-- The partial indexes are rebuilt with OR chains here; a query uses one only
-- when its WHERE contains the index's condition exactly as written, so the
-- queries spell the sets the same way (StateSQL in TernStore). The CHECK
-- constraints of message, recipient and attempt are rewritten the same way
-- by the migrator after this file (Migrator.checksWithoutInLists): SQLite
-- cannot alter a CHECK, and an equivalent condition needs no table rebuild.

DROP INDEX recipient_claim;
CREATE INDEX recipient_claim ON recipient (domain, next_attempt_at)
    WHERE (state = 'queued' OR state = 'deferred');

-- inflight and held first: the claimable pair at the front would be a
-- sub-term of this chain, and claim queries could take this index.
DROP INDEX recipient_live;
CREATE INDEX recipient_live ON recipient (domain, created_at)
    WHERE (state = 'inflight' OR state = 'held' OR state = 'queued' OR state = 'deferred');

DROP INDEX recipient_failed;
CREATE INDEX recipient_failed ON recipient (final_at)
    WHERE (state = 'bounced' OR state = 'expired');

-- Waiting recipients per domain by age, like Postfix's qshape (as in 0004,
-- with the live index's condition).
DROP VIEW queue_shape;
CREATE VIEW queue_shape AS
SELECT domain, count(*) AS total,
       sum(age < 5) AS "0-5m", sum(age >= 5 AND age < 10) AS "5-10m", sum(age >= 10 AND age < 20) AS "10-20m",
       sum(age >= 20 AND age < 40) AS "20-40m", sum(age >= 40 AND age < 80) AS "40-80m",
       sum(age >= 80 AND age < 160) AS "80-160m", sum(age >= 160) AS "160m+"
  FROM (SELECT domain, (CAST(strftime('%s', 'now') AS INTEGER) * 1000 - created_at) / 60000.0 AS age
          FROM recipient WHERE (state = 'inflight' OR state = 'held' OR state = 'queued' OR state = 'deferred'))
 GROUP BY domain
 ORDER BY total DESC, domain;
