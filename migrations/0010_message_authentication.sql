-- 0010: the authentication verdicts of received mail (issue 17).
--
-- Intake checks SPF, DKIM and DMARC for mail from other MTAs on relay
-- listeners and keeps the verdicts on the message row, beside the
-- Authentication-Results: field (RFC 8601) it adds to the stored text.
-- NULL: not checked (submission, trusted and authenticated clients, local
-- mail, DSNs, listeners with verify = off, and every message from before).
-- message is a hot table: the CHECKs are OR chains, not IN lists (see 0006);
-- a NULL passes them.
ALTER TABLE message ADD COLUMN auth_spf TEXT
    CHECK (auth_spf = 'none' OR auth_spf = 'neutral' OR auth_spf = 'pass' OR auth_spf = 'fail' OR
           auth_spf = 'softfail' OR auth_spf = 'temperror' OR auth_spf = 'permerror');
-- The message's DKIM result: pass when any signature passed, else the first
-- signature's result; 'none' when it had no signature.
ALTER TABLE message ADD COLUMN auth_dkim TEXT
    CHECK (auth_dkim = 'none' OR auth_dkim = 'pass' OR auth_dkim = 'fail' OR auth_dkim = 'policy' OR
           auth_dkim = 'neutral' OR auth_dkim = 'temperror' OR auth_dkim = 'permerror');
ALTER TABLE message ADD COLUMN auth_dmarc TEXT
    CHECK (auth_dmarc = 'none' OR auth_dmarc = 'pass' OR auth_dmarc = 'fail' OR auth_dmarc = 'temperror' OR
           auth_dmarc = 'permerror');
-- What the DMARC policy asked for this message after pct= ('quarantine':
-- kept and marked; 'reject' is stored under listener policy record only,
-- since enforce refuses such a message at the end of DATA).
ALTER TABLE message ADD COLUMN auth_disposition TEXT
    CHECK (auth_disposition = 'none' OR auth_disposition = 'quarantine' OR auth_disposition = 'reject');
-- The Authentication-Results: field's value as added to the message.
ALTER TABLE message ADD COLUMN auth_results TEXT;
