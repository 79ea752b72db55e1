// Read-side queries for `tern queue list`: recipients that are not final,
// with their message. Runs on a read connection; never blocks the writer.

import GRDB

public struct QueueEntry: Sendable, Equatable {
    public var queueID: String
    public var receivedAt: Int64
    public var mailFrom: String
    public var size: Int
    public var recipientID: Int64
    public var address: String
    public var domain: String
    public var state: RecipientState
    public var attempts: Int
    public var nextAttemptAt: Int64
    public var lastCode: Int?
    public var lastEnhanced: String?
    public var lastText: String?
}

public struct QueueFilter: Sendable {
    public var state: RecipientState?
    public var domain: String?
    public var limit: Int = 1000
    /// Rows skipped first (pages of the API).
    public var offset: Int = 0
    public init(state: RecipientState? = nil, domain: String? = nil, limit: Int = 1000, offset: Int = 0) {
        self.offset = offset
        self.state = state
        self.domain = domain
        self.limit = limit
    }
}

extension Store {
    /// Recipients still in the queue (not delivered, bounced, expired or
    /// suppressed), oldest message first; `state` may also name a final state.
    public func queueEntries(_ filter: QueueFilter = QueueFilter()) throws -> [QueueEntry] {
        try read { db in
            var sql = """
                SELECT m.queue_id, m.received_at, m.mail_from, m.size, r.id, r.address, r.domain, r.state,
                       r.attempts, r.next_attempt_at, r.last_code, r.last_enhanced, r.last_text
                  FROM recipient r JOIN message m ON m.id = r.message_id
                 WHERE
                """
            var args: [String: (any DatabaseValueConvertible)?] = ["limit": filter.limit, "offset": filter.offset]
            if let s = filter.state {
                sql += " r.state = :state"
                args["state"] = s
            } else {
                sql += " \(StateSQL.live)"
            }
            if let d = filter.domain {
                sql += " AND r.domain = :domain"
                args["domain"] = d.lowercased()
            }
            sql += " ORDER BY m.received_at, r.id LIMIT :limit OFFSET :offset"
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map { row in
                QueueEntry(queueID: row[0], receivedAt: row[1], mailFrom: row[2], size: row[3], recipientID: row[4],
                           address: row[5], domain: row[6], state: row[7], attempts: row[8], nextAttemptAt: row[9],
                           lastCode: row[10], lastEnhanced: row[11], lastText: row[12])
            }
        }
    }

    /// Count of recipients per state (`condition`: only those rows, e.g. `StateSQL.live`, which takes its index).
    public func stateCounts(where condition: String = "1") throws -> [RecipientState: Int] {
        try read { db in
            var out: [RecipientState: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT state, count(*) FROM recipient WHERE \(condition) GROUP BY state") {
                out[row[0]] = row[1]
            }
            return out
        }
    }
}
