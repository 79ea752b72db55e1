-- 0011: traffic shaping and bounce categories (issue 18).
--
-- shaping_state: each destination's adaptive state as the running server
-- last wrote it (throttled, suspended, climbing back), so that a restart
-- resumes a suspension or a throttle where it was; with a snapshot of the
-- open connections and message tokens for `tern shaping show`. A
-- destination is a provider name (google, microsoft, …) or a domain;
-- source is the local address ('' for the kernel's choice).
CREATE TABLE shaping_state (
    source          TEXT    NOT NULL DEFAULT '',
    destination     TEXT    NOT NULL,
    mode            TEXT    NOT NULL CHECK (mode = 'normal' OR mode = 'throttled' OR mode = 'suspended' OR mode = 'paused'),
    factor          REAL    NOT NULL DEFAULT 1,
    hold_until      INTEGER,
    suspended_until INTEGER,
    rule_limits     TEXT    CHECK (rule_limits IS NULL OR json_valid(rule_limits)),
    rule            TEXT,
    reason          TEXT,
    last_step_at    INTEGER NOT NULL DEFAULT 0,
    open            INTEGER NOT NULL DEFAULT 0,
    tokens          TEXT    CHECK (tokens IS NULL OR json_valid(tokens)),
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (source, destination)
) STRICT;

-- What operators set with `tern shaping pause|resume|set`: written by the
-- command only, read by a running server within a second (it watches
-- `version`, one counter over the table).
CREATE TABLE shaping_override (
    source      TEXT    NOT NULL DEFAULT '',
    destination TEXT    NOT NULL,
    paused      INTEGER NOT NULL DEFAULT 0 CHECK (paused = 0 OR paused = 1),
    limits      TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(limits)),
    reset_at    INTEGER,                      -- `resume`: end automatic throttling too
    version     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (source, destination)
) STRICT;

-- The categories of attempt.category become the bounce classifier's
-- (BounceCategory in TernScheduler); the old names map onto them.
UPDATE attempt SET category = CASE category
    WHEN 'unknown_user'      THEN 'invalid_recipient'
    WHEN 'bad_domain_or_dns' THEN 'dns'
    WHEN 'mailbox_disabled'  THEN 'inactive_mailbox'
    WHEN 'too_big'           THEN 'too_large'
    WHEN 'spam'              THEN 'spam_content'
    WHEN 'content'           THEN 'spam_content'
    WHEN 'policy'            THEN 'policy_auth'
    WHEN 'security_tls_auth' THEN 'policy_auth'
    ELSE category END
WHERE category IS NOT NULL;

-- The event log takes the shaping kinds (shaping_throttled, _suspended,
-- _ramped, _resumed, _paused, _set): the migrator's follow-up for 0011
-- extends the CHECK migration 9 put on event.kind (Migrator.eventKindCheck11).
SELECT 1;
