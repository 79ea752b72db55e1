-- 0001: the public schema of Tern's queue (see README "Schema").
-- All times are INTEGER Unix milliseconds, UTC.

-- One row per accepted message.
CREATE TABLE message (
    id                INTEGER PRIMARY KEY,
    queue_id          TEXT    NOT NULL UNIQUE,          -- the id given in the 250 reply
    received_at       INTEGER NOT NULL,
    mail_from         TEXT    NOT NULL,                 -- '' for the null sender
    size              INTEGER NOT NULL CHECK (size >= 0),
    body              BLOB,                             -- as received, our Received: on top; NULL once pruned
    client_address    TEXT,
    helo              TEXT,
    auth_user         TEXT,
    header_message_id TEXT,
    env_id            TEXT,                             -- RFC 3461 ENVID (decoded)
    ret               TEXT    CHECK (ret IN ('FULL', 'HDRS')),
    body_type         TEXT    CHECK (body_type IN ('7BIT', '8BITMIME')),
    smtputf8          INTEGER NOT NULL DEFAULT 0 CHECK (smtputf8 IN (0, 1)),
    origin            TEXT    NOT NULL CHECK (origin IN ('smtp', 'submission', 'local', 'dsn'))
) STRICT;

CREATE INDEX message_received_at ON message (received_at);
CREATE INDEX message_mail_from ON message (mail_from);
CREATE INDEX message_header_message_id ON message (header_message_id) WHERE header_message_id IS NOT NULL;

-- One row per envelope recipient; its state is the delivery state.
CREATE TABLE recipient (
    id               INTEGER PRIMARY KEY,
    message_id       INTEGER NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    address          TEXT    NOT NULL,
    domain           TEXT    NOT NULL,                 -- lower-case, IDNA A-label
    state            TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'inflight', 'delivered', 'deferred', 'bounced',
                                      'expired', 'held', 'suppressed')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_code        INTEGER,
    last_enhanced    TEXT,
    last_text        TEXT,
    notify           TEXT,                             -- RFC 3461 NOTIFY: NULL (default), 'NEVER' or e.g. 'SUCCESS,FAILURE'
    orcpt            TEXT,                             -- RFC 3461 ORCPT, 'type;address' decoded
    created_at       INTEGER NOT NULL,
    final_at         INTEGER,
    -- A recipient is in flight exactly when it carries a lease.
    CHECK ((state = 'inflight') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CHECK (state = 'inflight' OR (lease_owner IS NULL AND lease_expires_at IS NULL)),
    -- Final states, and only they, have a final time.
    CHECK ((state IN ('delivered', 'bounced', 'expired', 'suppressed')) = (final_at IS NOT NULL))
) STRICT;

-- The claim: due recipients of one domain in next_attempt_at order. Partial,
-- so its size follows the live queue, not the history.
CREATE INDEX recipient_claim ON recipient (domain, next_attempt_at)
    WHERE state IN ('queued', 'deferred');
CREATE INDEX recipient_message ON recipient (message_id);
CREATE INDEX recipient_address ON recipient (address);
CREATE INDEX recipient_lease ON recipient (lease_expires_at) WHERE state = 'inflight';

-- One row per delivery try of one recipient.
CREATE TABLE attempt (
    id             INTEGER PRIMARY KEY,
    recipient_id   INTEGER NOT NULL REFERENCES recipient (id) ON DELETE CASCADE,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER NOT NULL,
    mx_host        TEXT,
    mx_address     TEXT,
    source_address TEXT,
    tls            TEXT,                                -- protocol and cipher, or NULL
    code           INTEGER,
    enhanced       TEXT,
    text           TEXT,
    outcome        TEXT    NOT NULL CHECK (outcome IN ('delivered', 'deferred', 'bounced')),
    category       TEXT
) STRICT;

CREATE INDEX attempt_recipient ON attempt (recipient_id, started_at);
CREATE INDEX attempt_started_at ON attempt (started_at);

-- The tracking log. Ids are references, not constraints: the log outlives
-- pruned messages.
CREATE TABLE event (
    id           INTEGER PRIMARY KEY,
    at           INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    message_id   INTEGER,
    recipient_id INTEGER,
    detail       TEXT    CHECK (detail IS NULL OR json_valid(detail))
) STRICT;

CREATE INDEX event_message ON event (message_id, at);
CREATE INDEX event_recipient ON event (recipient_id, at) WHERE recipient_id IS NOT NULL;
CREATE INDEX event_at ON event (at);
