-- 0003: accounts for SMTP AUTH (RFC 4954) on submission listeners.

-- One row per login. `password_hash` carries its own parameters
-- ($pbkdf2-sha256$ROUNDS$SALT$HASH, base64), so the cost can be raised
-- later without invalidating stored hashes. `senders` is a JSON array of
-- the envelope senders the account may use: "user@example.com",
-- "@example.com" (the whole domain) or "*" (any).
CREATE TABLE account (
    name          TEXT    PRIMARY KEY COLLATE NOCASE,
    password_hash TEXT    NOT NULL,
    senders       TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(senders) AND json_type(senders) = 'array'),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

-- Events that belong to no message (auth_failed, auth_blocked), newest first per kind.
CREATE INDEX event_kind ON event (kind, at) WHERE message_id IS NULL;
