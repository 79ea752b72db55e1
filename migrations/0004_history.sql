-- 0004: delivery history and stats for people (views), the suppression
-- list, the MX cache and MX host health (routing that learns).

-- Final recipients by when they became final (stats windows, retention).
CREATE INDEX recipient_final_at ON recipient (final_at) WHERE final_at IS NOT NULL;
-- Live recipients by domain and age (queue_shape, tern stats queue).
CREATE INDEX recipient_live ON recipient (domain, created_at)
    WHERE state IN ('queued', 'deferred', 'inflight', 'held');

-- Addresses Tern will not deliver to. A recipient whose address is here
-- becomes `suppressed` instead of being tried (with a DSN as NOTIFY asks).
-- `source`: 'bounce' (added by a hard bounce that said the user or domain
-- does not exist), 'manual' (tern suppress add) or 'import'.
CREATE TABLE suppression (
    address    TEXT    PRIMARY KEY COLLATE NOCASE,
    reason     TEXT    NOT NULL,
    source     TEXT    NOT NULL CHECK (source IN ('bounce', 'manual', 'import')),
    created_at INTEGER NOT NULL,
    expires_at INTEGER                 -- NULL: until removed
) STRICT;

-- MX answers with their TTL, so that routing does not ask DNS for every
-- connection. `status`: 'ok' (records in `answer`, a JSON array of
-- [preference, host]), 'nxdomain', 'none' (no MX records: implicit MX).
CREATE TABLE mx_cache (
    domain     TEXT    PRIMARY KEY,
    status     TEXT    NOT NULL CHECK (status IN ('ok', 'nxdomain', 'none')),
    answer     TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(answer)),
    fetched_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

-- Each MX host's recent health: the circuit breaker. A host that failed to
-- connect or greeted with 4xx `failures` times in a row is skipped until
-- `cooldown_until`; the cool-down doubles while it keeps failing.
CREATE TABLE mx_health (
    host            TEXT    PRIMARY KEY,
    failures        INTEGER NOT NULL DEFAULT 0,   -- consecutive
    successes       INTEGER NOT NULL DEFAULT 0,   -- in total
    last_error      TEXT,
    last_failure_at INTEGER,
    last_success_at INTEGER,
    cooldown_until  INTEGER
) STRICT;

-- One row per recipient: where it is and how it got there.
CREATE VIEW delivery_history AS
SELECT m.queue_id,
       m.mail_from                                        AS sender,
       r.address                                          AS recipient,
       r.domain,
       r.state,
       r.attempts,
       datetime(m.received_at / 1000, 'unixepoch')        AS received,
       datetime(fa.started_at / 1000, 'unixepoch')        AS first_attempt,
       datetime(la.started_at / 1000, 'unixepoch')        AS last_attempt,
       r.last_code                                        AS final_code,
       r.last_enhanced                                    AS final_enhanced,
       r.last_text                                        AS final_text,
       la.mx_host,
       la.tls,
       CASE WHEN r.state = 'delivered' THEN (r.final_at - m.received_at) / 1000.0 END AS seconds_to_deliver,
       m.received_at, fa.started_at AS first_attempt_at, la.started_at AS last_attempt_at, r.final_at,
       r.id AS recipient_id, m.id AS message_id
  FROM recipient r
  JOIN message m ON m.id = r.message_id
  LEFT JOIN attempt fa ON fa.id = (SELECT a.id FROM attempt a WHERE a.recipient_id = r.id ORDER BY a.started_at, a.id LIMIT 1)
  LEFT JOIN attempt la ON la.id = (SELECT a.id FROM attempt a WHERE a.recipient_id = r.id ORDER BY a.started_at DESC, a.id DESC LIMIT 1);

-- Per destination domain: recipients by state, rates, time to deliver,
-- the most frequent deferral reply. Rates are over final recipients
-- (delivered) and over attempts (deferred).
CREATE VIEW domain_stats AS
WITH per_domain AS (
    SELECT domain, count(*) AS recipients,
           sum(state = 'delivered') AS delivered, sum(state = 'bounced') AS bounced,
           sum(state = 'expired') AS expired, sum(state = 'suppressed') AS suppressed,
           sum(state IN ('queued', 'deferred', 'inflight', 'held')) AS waiting
      FROM recipient GROUP BY domain),
attempts AS (
    SELECT r.domain, count(*) AS attempts, sum(a.outcome = 'deferred') AS deferrals
      FROM attempt a JOIN recipient r ON r.id = a.recipient_id GROUP BY r.domain),
delivered AS (
    SELECT r.domain, (r.final_at - m.received_at) / 1000.0 AS secs,
           row_number() OVER (PARTITION BY r.domain ORDER BY r.final_at - m.received_at) AS rn,
           count(*) OVER (PARTITION BY r.domain) AS n
      FROM recipient r JOIN message m ON m.id = r.message_id WHERE r.state = 'delivered'),
timing AS (
    SELECT domain, max(CASE WHEN rn = (n + 1) / 2 THEN secs END) AS median_seconds,
           max(CASE WHEN rn = (n * 95 + 99) / 100 THEN secs END) AS p95_seconds
      FROM delivered GROUP BY domain),
deferral_replies AS (
    SELECT r.domain, coalesce(a.code || ' ', '') || coalesce(a.enhanced || ' ', '') || coalesce(a.text, '') AS reply,
           count(*) AS n
      FROM attempt a JOIN recipient r ON r.id = a.recipient_id WHERE a.outcome = 'deferred' GROUP BY 1, 2),
top_deferral AS (
    SELECT domain, reply, n FROM (
        SELECT domain, reply, n, row_number() OVER (PARTITION BY domain ORDER BY n DESC, reply) AS k FROM deferral_replies)
     WHERE k = 1)
SELECT p.domain, p.recipients, p.delivered, p.bounced, p.expired, p.suppressed, p.waiting,
       round(1.0 * p.delivered / nullif(p.delivered + p.bounced + p.expired, 0), 4) AS delivery_rate,
       coalesce(a.attempts, 0) AS attempts,
       round(1.0 * a.deferrals / nullif(a.attempts, 0), 4) AS deferral_rate,
       t.median_seconds, t.p95_seconds,
       d.reply AS top_deferral, d.n AS top_deferral_count
  FROM per_domain p
  LEFT JOIN attempts a ON a.domain = p.domain
  LEFT JOIN timing t ON t.domain = p.domain
  LEFT JOIN top_deferral d ON d.domain = p.domain;

-- Per MX host: attempts, success rate, TLS share, session time, last error.
CREATE VIEW mx_stats AS
WITH ranked AS (
    SELECT mx_host, (ended_at - started_at) / 1000.0 AS secs,
           row_number() OVER (PARTITION BY mx_host ORDER BY ended_at - started_at) AS rn,
           count(*) OVER (PARTITION BY mx_host) AS n
      FROM attempt WHERE mx_host IS NOT NULL),
p95 AS (
    SELECT mx_host, max(CASE WHEN rn = (n * 95 + 99) / 100 THEN secs END) AS p95_session_seconds FROM ranked GROUP BY mx_host),
last_error AS (
    SELECT mx_host, coalesce(code || ' ', '') || coalesce(enhanced || ' ', '') || coalesce(text, '') AS reply, started_at FROM (
        SELECT mx_host, code, enhanced, text, started_at,
               row_number() OVER (PARTITION BY mx_host ORDER BY started_at DESC, id DESC) AS k
          FROM attempt WHERE mx_host IS NOT NULL AND outcome <> 'delivered')
     WHERE k = 1)
SELECT a.mx_host, count(*) AS attempts,
       round(1.0 * sum(a.outcome = 'delivered') / count(*), 4) AS success_rate,
       round(1.0 * sum(a.tls IS NOT NULL) / count(*), 4) AS tls_share,
       round(avg((a.ended_at - a.started_at) / 1000.0), 3) AS mean_session_seconds,
       p.p95_session_seconds,
       e.reply AS last_error, datetime(e.started_at / 1000, 'unixepoch') AS last_error_time,
       h.failures AS consecutive_failures,
       CASE WHEN h.cooldown_until > CAST(strftime('%s', 'now') AS INTEGER) * 1000
            THEN datetime(h.cooldown_until / 1000, 'unixepoch') END AS cooling_down_until
  FROM attempt a
  LEFT JOIN p95 p ON p.mx_host = a.mx_host
  LEFT JOIN last_error e ON e.mx_host = a.mx_host
  LEFT JOIN mx_health h ON h.host = a.mx_host
 WHERE a.mx_host IS NOT NULL
 GROUP BY a.mx_host;

-- Waiting recipients per domain by age, like Postfix's qshape.
CREATE VIEW queue_shape AS
SELECT domain, count(*) AS total,
       sum(age < 5) AS "0-5m", sum(age >= 5 AND age < 10) AS "5-10m", sum(age >= 10 AND age < 20) AS "10-20m",
       sum(age >= 20 AND age < 40) AS "20-40m", sum(age >= 40 AND age < 80) AS "40-80m",
       sum(age >= 80 AND age < 160) AS "80-160m", sum(age >= 160) AS "160m+"
  FROM (SELECT domain, (CAST(strftime('%s', 'now') AS INTEGER) * 1000 - created_at) / 60000.0 AS age
          FROM recipient WHERE state IN ('queued', 'deferred', 'inflight', 'held'))
 GROUP BY domain
 ORDER BY total DESC, domain;
