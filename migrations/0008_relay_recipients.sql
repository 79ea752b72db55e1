-- 0008: valid recipients of relay domains (issue 15, backscatter). A relay
-- domain with entries here, or with a row in relay_domain_policy, accepts
-- at RCPT only the listed addresses (550 5.1.1 for the rest) unless its
-- catch_all is on; a relay domain with neither accepts any recipient, as
-- before. Addresses are stored in canonical form: the local part as
-- written, the domain a lower-case A-label.
CREATE TABLE relay_recipient (
    address    TEXT    PRIMARY KEY COLLATE NOCASE,
    domain     TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE INDEX relay_recipient_domain ON relay_recipient (domain);

CREATE TABLE relay_domain_policy (
    domain     TEXT    PRIMARY KEY,
    catch_all  INTEGER NOT NULL CHECK (catch_all IN (0, 1)),
    updated_at INTEGER NOT NULL
) STRICT;
