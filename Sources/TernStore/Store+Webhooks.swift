// Webhooks' outbox (issue 20, migration 0014): subscriptions written at
// start-up from `[[webhook]]`, the outbox the event trigger fills, and the
// sender's reads and writes.

import GRDB

/// One event waiting for an endpoint, with what its POST reports.
public struct WebhookEvent: Sendable, Equatable {
    public var outboxID: Int64
    public var eventID: Int64
    public var at: Int64
    public var kind: String
    public var detail: String?
    public var queueID: String?
    public var headerMessageID: String?
    public var sender: String?
    public var recipient: String?
    public var state: String?
    public var attempts: Int?
    /// The last attempt that started before the event (delivered, deferred, bounced).
    public var code: Int?
    public var enhanced: String?
    public var text: String?
    public var mxHost: String?
    public var category: String?

    public init(outboxID: Int64, eventID: Int64, at: Int64, kind: String, detail: String? = nil, queueID: String? = nil,
                headerMessageID: String? = nil, sender: String? = nil, recipient: String? = nil, state: String? = nil, attempts: Int? = nil,
                code: Int? = nil, enhanced: String? = nil, text: String? = nil, mxHost: String? = nil, category: String? = nil) {
        self.outboxID = outboxID
        self.eventID = eventID
        self.at = at
        self.kind = kind
        self.detail = detail
        self.queueID = queueID
        self.headerMessageID = headerMessageID
        self.sender = sender
        self.recipient = recipient
        self.state = state
        self.attempts = attempts
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.mxHost = mxHost
        self.category = category
    }
}

public struct WebhookEndpointStatus: Sendable, Equatable {
    public var name: String
    public var url: String
    public var sent: Int
    public var failures: Int
    public var lastSuccessAt: Int64?
    public var lastFailureAt: Int64?
    public var lastError: String?
    public var nextTryAt: Int64?
    public var pending: Int
    public var oldestPendingAt: Int64?
}

extension Store {
    /// The trigger that fills the outbox in the transaction of each event.
    static let outboxTrigger = """
        CREATE TRIGGER IF NOT EXISTS webhook_outbox_fill AFTER INSERT ON event
        BEGIN
            INSERT INTO webhook_outbox (endpoint, event_id)
                SELECT endpoint, NEW.id FROM webhook_subscription WHERE kind = NEW.kind;
        END
        """

    /// Makes the subscriptions and endpoints those configured (one
    /// transaction); the outbox rows of endpoints no longer configured are
    /// dropped. The trigger exists only while an endpoint does: without
    /// webhooks, writing an event costs what it did before. Returns how
    /// many outbox rows were dropped.
    public func syncWebhooks(_ endpoints: [(name: String, url: String, kinds: [String])]) async throws -> Int {
        try await write { db in
            try db.execute(sql: endpoints.isEmpty ? "DROP TRIGGER IF EXISTS webhook_outbox_fill" : Store.outboxTrigger)
            try db.execute(sql: "DELETE FROM webhook_subscription")
            for e in endpoints {
                for kind in Set(e.kinds) {
                    try db.execute(sql: "INSERT INTO webhook_subscription (kind, endpoint) VALUES (?, ?)", arguments: [kind, e.name])
                }
                try db.execute(sql: """
                    INSERT INTO webhook_endpoint (name, url) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET url = ?2
                    """, arguments: [e.name, e.url])
            }
            // What is no longer configured: every row when nothing is.
            let names = endpoints.map(\.name)
            func unconfigured(_ column: String) -> String {
                names.isEmpty ? "1" : "\(column) NOT IN (\(names.map { _ in "?" }.joined(separator: ",")))"
            }
            try db.execute(sql: "DELETE FROM webhook_outbox WHERE \(unconfigured("endpoint"))", arguments: StatementArguments(names))
            let dropped = db.changesCount
            try db.execute(sql: "DELETE FROM webhook_endpoint WHERE \(unconfigured("name"))", arguments: StatementArguments(names))
            return dropped
        }
    }

    /// The endpoint's oldest waiting events, in the order they were committed.
    public func webhookBatch(endpoint: String, limit: Int) throws -> [WebhookEvent] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT o.id, e.id, e.at, e.kind, e.detail, m.queue_id, m.header_message_id, m.mail_from, r.address, r.state, r.attempts,
                       a.code, a.enhanced, a.text, a.mx_host, a.category
                  FROM webhook_outbox o
                  LEFT JOIN event e ON e.id = o.event_id
                  LEFT JOIN message m ON m.id = e.message_id
                  LEFT JOIN recipient r ON r.id = e.recipient_id
                  LEFT JOIN attempt a ON a.id = (SELECT max(id) FROM attempt WHERE recipient_id = e.recipient_id AND started_at <= e.at)
                 WHERE o.endpoint = ?1
                 ORDER BY o.id LIMIT ?2
                """, arguments: [endpoint, limit]).map { row in
                WebhookEvent(outboxID: row[0], eventID: row[1] ?? 0, at: row[2] ?? 0, kind: row[3] ?? "", detail: row[4], queueID: row[5],
                             headerMessageID: row[6], sender: row[7], recipient: row[8], state: row[9], attempts: row[10],
                             code: row[11], enhanced: row[12], text: row[13], mxHost: row[14], category: row[15])
            }
        }
    }

    /// The endpoint took everything up to `outboxID`.
    public func webhookSent(endpoint: String, upTo outboxID: Int64, count: Int, at now: Int64) async throws {
        _ = try await write(durable: false) { db in
            try db.execute(sql: "DELETE FROM webhook_outbox WHERE endpoint = ?1 AND id <= ?2", arguments: [endpoint, outboxID])
            try db.execute(sql: """
                UPDATE webhook_endpoint SET sent = sent + ?2, failures = 0, last_success_at = ?3, next_try_at = NULL WHERE name = ?1
                """, arguments: [endpoint, count, now])
            return 0
        }
    }

    /// The endpoint failed; the next try is at `next`.
    public func webhookFailed(endpoint: String, error: String, at now: Int64, next: Int64) async throws {
        _ = try await write(durable: false) { db in
            try db.execute(sql: """
                UPDATE webhook_endpoint SET failures = failures + 1, last_failure_at = ?2, last_error = ?3, next_try_at = ?4 WHERE name = ?1
                """, arguments: [endpoint, now, String(error.prefix(500)), next])
            return 0
        }
    }

    public func webhookStatus() throws -> [WebhookEndpointStatus] {
        try read { db in
            try Row.fetchAll(db, sql: """
                SELECT w.name, w.url, w.sent, w.failures, w.last_success_at, w.last_failure_at, w.last_error, w.next_try_at,
                       (SELECT count(*) FROM webhook_outbox o WHERE o.endpoint = w.name),
                       (SELECT e.at FROM webhook_outbox o JOIN event e ON e.id = o.event_id WHERE o.endpoint = w.name ORDER BY o.id LIMIT 1)
                  FROM webhook_endpoint w ORDER BY w.name
                """).map { row in
                WebhookEndpointStatus(name: row[0], url: row[1], sent: row[2], failures: row[3], lastSuccessAt: row[4], lastFailureAt: row[5],
                                      lastError: row[6], nextTryAt: row[7], pending: row[8], oldestPendingAt: row[9])
            }
        }
    }

    /// Queues again, for `endpoint`, the events of `kinds` in the window
    /// (they follow whatever is waiting). Returns how many.
    public func webhookReplay(endpoint: String, kinds: [String], window: TimeWindow) async throws -> Int {
        try await write { db in
            guard !kinds.isEmpty else { return 0 }
            try db.execute(sql: """
                INSERT INTO webhook_outbox (endpoint, event_id)
                SELECT ?, id FROM event WHERE at >= ? AND at < ? AND kind IN (\(kinds.map { _ in "?" }.joined(separator: ","))) ORDER BY id
                """, arguments: StatementArguments([endpoint, window.since, window.until] as [any DatabaseValueConvertible] + kinds))
            return db.changesCount
        }
    }
}
