-- 0012: source addresses and pools, IP warm-up, blocklist monitoring (issue 19).
--
-- recipient.pool: the source pool the message was given at intake (NULL:
-- the default pool). The scheduler claims by (domain, pool): a connection
-- leaves from one source, so it carries one pool's mail.
ALTER TABLE recipient ADD COLUMN pool TEXT;
-- The claim index grows the pool: the due-lane query groups by (domain,
-- pool) in index order without reading the table (with the pool outside
-- the index it read every waiting row: 30 ms instead of 6 at 36,000
-- waiting), and a claim seeks (domain, pool) directly.
DROP INDEX recipient_claim;
CREATE INDEX recipient_claim ON recipient (domain, pool, next_attempt_at)
    WHERE (state = 'queued' OR state = 'deferred');
-- attempt.source: the name of the [[source]] the connection left from
-- (NULL: the kernel chose the address; attempt.source_address has it).
ALTER TABLE attempt ADD COLUMN source TEXT;
CREATE INDEX attempt_source ON attempt (source, started_at) WHERE source IS NOT NULL;

-- Sources the server could not bind (the address is gone): out of rotation
-- until a bind succeeds again. Written by the server, read by `tern warmup
-- status` and `tern stats routes`.
CREATE TABLE source_status (
    source      TEXT    PRIMARY KEY,
    address     TEXT    NOT NULL,
    bind_error  TEXT,
    failed_at   INTEGER,
    updated_at  INTEGER NOT NULL
) STRICT;

-- Each warming source's place in its plan. The server advances `day` at
-- each day's end by how the day went; `tern warmup start|pause|resume|
-- skip-to` write here too and bump operator_version, which a running server
-- watches (its own writes never overwrite a newer operator change).
CREATE TABLE warmup_state (
    source           TEXT    PRIMARY KEY,
    plan             TEXT    NOT NULL,
    day              INTEGER NOT NULL CHECK (day >= 1),
    day_started_at   INTEGER NOT NULL,
    status           TEXT    NOT NULL CHECK (status = 'active' OR status = 'paused' OR status = 'done'),
    verdict          TEXT    CHECK (verdict IS NULL OR verdict = 'advanced' OR verdict = 'held' OR verdict = 'stepped_back'),
    reason           TEXT,
    operator_version INTEGER NOT NULL DEFAULT 0,
    updated_at       INTEGER NOT NULL
) STRICT;

-- The current plan day's volume and results per source and destination
-- (provider or domain), and the current hour's volume: a restart resumes
-- the same day with the same counts. A row belongs to the day that started
-- at day_started_at (a held day repeats its number, not its start).
CREATE TABLE warmup_usage (
    source          TEXT    NOT NULL,
    destination     TEXT    NOT NULL,
    day_started_at  INTEGER NOT NULL,
    sent            INTEGER NOT NULL DEFAULT 0,
    delivered       INTEGER NOT NULL DEFAULT 0,
    deferred        INTEGER NOT NULL DEFAULT 0,
    bounced         INTEGER NOT NULL DEFAULT 0,
    blocked         INTEGER NOT NULL DEFAULT 0,
    hour_started_at INTEGER NOT NULL,
    hour_sent       INTEGER NOT NULL DEFAULT 0,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (source, destination)
) STRICT;

-- The last answer of each DNS blocklist for each source address (or EHLO
-- domain, for domain lists): `listed` with the A record's return code and
-- the TXT reason.
CREATE TABLE blocklist_status (
    source      TEXT    NOT NULL,
    zone        TEXT    NOT NULL,
    query       TEXT    NOT NULL,                   -- the address or domain looked up
    listed      INTEGER NOT NULL CHECK (listed = 0 OR listed = 1),
    code        TEXT,
    reason      TEXT,
    checked_at  INTEGER NOT NULL,
    changed_at  INTEGER NOT NULL,
    PRIMARY KEY (source, zone, query)
) STRICT;

-- The event log takes the kinds of sources, warm-up and blocklists (the
-- migrator's follow-up for 0012 extends the CHECK: Migrator.eventKindCheck12).
SELECT 1;
