-- 0002: what delivery needs beyond 0001.

-- When the one delay DSN (RFC 3464 Action: delayed) for a recipient was queued.
ALTER TABLE recipient ADD COLUMN delay_notified_at INTEGER;

-- For a DSN message (origin 'dsn'): the message it reports on.
ALTER TABLE message ADD COLUMN dsn_for INTEGER;

-- The most recent attempts first, per MX host (routing stats, circuit breaker).
CREATE INDEX attempt_mx_host ON attempt (mx_host, started_at) WHERE mx_host IS NOT NULL;
