-- 0013: bearer tokens for the HTTP listener (issue 20). Only a SHA-256 of
-- each token is kept (tokens are 256 random bits: a slow hash adds nothing);
-- `tern api token add` shows the token once.
CREATE TABLE api_token (
    name         TEXT    PRIMARY KEY,
    token_hash   TEXT    NOT NULL UNIQUE,
    scope        TEXT    NOT NULL CHECK (scope = 'inject' OR scope = 'read' OR scope = 'admin'),
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
) STRICT;
