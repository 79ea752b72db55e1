-- 0014: durable webhooks (issue 20). The event log is written in the same
-- transaction as every state change; a trigger (webhook_outbox_fill, made by
-- `tern serve` while a [[webhook]] is configured and dropped when none is, so
-- that it costs nothing otherwise) copies each event whose kind an endpoint
-- subscribes to into the outbox, in that same transaction: nothing reported
-- can be missed and nothing unreported is sent. A sender drains each
-- endpoint's rows in id order (the order of the commits) and deletes them
-- once the endpoint answered 2xx: at least once, in order.
CREATE TABLE webhook_subscription (
    kind      TEXT NOT NULL,
    endpoint  TEXT NOT NULL,
    PRIMARY KEY (kind, endpoint)
) STRICT, WITHOUT ROWID;

CREATE TABLE webhook_outbox (
    id        INTEGER PRIMARY KEY,
    endpoint  TEXT    NOT NULL,
    event_id  INTEGER NOT NULL
) STRICT;

CREATE INDEX webhook_outbox_endpoint ON webhook_outbox (endpoint, id);

-- Each configured endpoint and how its deliveries go (for `tern webhooks list`).
CREATE TABLE webhook_endpoint (
    name             TEXT    PRIMARY KEY,
    url              TEXT    NOT NULL,
    sent             INTEGER NOT NULL DEFAULT 0,
    failures         INTEGER NOT NULL DEFAULT 0,
    last_success_at  INTEGER,
    last_failure_at  INTEGER,
    last_error       TEXT,
    next_try_at      INTEGER
) STRICT;
