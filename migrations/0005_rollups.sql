-- 0005: daily rollups, so that `tern stats` over weeks of history reads
-- thousands of rows instead of millions. They are kept in the same
-- transactions as the rows they summarise (attempts, final transitions),
-- and `tern stats rebuild` recomputes them from those rows. Windows that
-- start or end inside a day read that part from the raw tables, so every
-- count is exact; percentiles come from the histograms below.
--
-- Histogram buckets (upper bounds, inclusive):
--   time to deliver, seconds: 1 2 5 10 20 30 60 120 300 600 1200 1800 3600
--                             7200 14400 28800 86400 172800 432000 +inf   (d0..d19)
--   session time, ms:         50 100 200 300 500 750 1000 1500 2000 3000
--                             5000 7500 10000 15000 20000 30000 60000 120000 300000 +inf  (s0..s19)

-- Attempts per day they started, destination domain and MX host.
CREATE TABLE attempt_daily (
    day        INTEGER NOT NULL,          -- started_at / 86400000
    domain     TEXT    NOT NULL,
    mx_host    TEXT    NOT NULL,          -- '' when no host was reached
    attempts   INTEGER NOT NULL DEFAULT 0,
    delivered  INTEGER NOT NULL DEFAULT 0,
    deferred   INTEGER NOT NULL DEFAULT 0,
    bounced    INTEGER NOT NULL DEFAULT 0,
    with_tls   INTEGER NOT NULL DEFAULT 0,
    session_ms INTEGER NOT NULL DEFAULT 0, -- sum of ended_at - started_at
    s0 INTEGER NOT NULL DEFAULT 0, s1 INTEGER NOT NULL DEFAULT 0, s2 INTEGER NOT NULL DEFAULT 0, s3 INTEGER NOT NULL DEFAULT 0,
    s4 INTEGER NOT NULL DEFAULT 0, s5 INTEGER NOT NULL DEFAULT 0, s6 INTEGER NOT NULL DEFAULT 0, s7 INTEGER NOT NULL DEFAULT 0,
    s8 INTEGER NOT NULL DEFAULT 0, s9 INTEGER NOT NULL DEFAULT 0, s10 INTEGER NOT NULL DEFAULT 0, s11 INTEGER NOT NULL DEFAULT 0,
    s12 INTEGER NOT NULL DEFAULT 0, s13 INTEGER NOT NULL DEFAULT 0, s14 INTEGER NOT NULL DEFAULT 0, s15 INTEGER NOT NULL DEFAULT 0,
    s16 INTEGER NOT NULL DEFAULT 0, s17 INTEGER NOT NULL DEFAULT 0, s18 INTEGER NOT NULL DEFAULT 0, s19 INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, domain, mx_host)
) STRICT, WITHOUT ROWID;

-- Deferral replies per day and domain (the most frequent one per domain).
CREATE TABLE deferral_daily (
    day    INTEGER NOT NULL,
    domain TEXT    NOT NULL,
    reply  TEXT    NOT NULL,              -- "code enhanced text"
    n      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, domain, reply)
) STRICT, WITHOUT ROWID;

-- Recipients that reached a final state, per day they were received and
-- domain, with the time-to-deliver histogram of the delivered ones.
CREATE TABLE recipient_daily (
    day        INTEGER NOT NULL,          -- created_at / 86400000 (the day the message was received)
    domain     TEXT    NOT NULL,
    delivered  INTEGER NOT NULL DEFAULT 0,
    bounced    INTEGER NOT NULL DEFAULT 0,
    expired    INTEGER NOT NULL DEFAULT 0,
    suppressed INTEGER NOT NULL DEFAULT 0,
    d0 INTEGER NOT NULL DEFAULT 0, d1 INTEGER NOT NULL DEFAULT 0, d2 INTEGER NOT NULL DEFAULT 0, d3 INTEGER NOT NULL DEFAULT 0,
    d4 INTEGER NOT NULL DEFAULT 0, d5 INTEGER NOT NULL DEFAULT 0, d6 INTEGER NOT NULL DEFAULT 0, d7 INTEGER NOT NULL DEFAULT 0,
    d8 INTEGER NOT NULL DEFAULT 0, d9 INTEGER NOT NULL DEFAULT 0, d10 INTEGER NOT NULL DEFAULT 0, d11 INTEGER NOT NULL DEFAULT 0,
    d12 INTEGER NOT NULL DEFAULT 0, d13 INTEGER NOT NULL DEFAULT 0, d14 INTEGER NOT NULL DEFAULT 0, d15 INTEGER NOT NULL DEFAULT 0,
    d16 INTEGER NOT NULL DEFAULT 0, d17 INTEGER NOT NULL DEFAULT 0, d18 INTEGER NOT NULL DEFAULT 0, d19 INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, domain)
) STRICT, WITHOUT ROWID;

-- Recipients by the day they were received (raw edges of stats windows).
CREATE INDEX recipient_created_at ON recipient (created_at);

-- Recipients to role accounts (postmaster@, info@, …) that reached a final
-- state, per day received and local part.
CREATE TABLE role_daily (
    day  INTEGER NOT NULL,
    role TEXT    NOT NULL,
    n    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, role)
) STRICT, WITHOUT ROWID;

-- The latest failed attempts per MX host (last error in `tern stats routes`).
CREATE INDEX attempt_errors ON attempt (mx_host, started_at) WHERE outcome <> 'delivered';

-- Failed recipients by when they failed (repeated bounces, suppression candidates).
CREATE INDEX recipient_failed ON recipient (final_at) WHERE state IN ('bounced', 'expired');
