// Operator actions on the queue (`tern queue …`). Each is one transaction
// that selects and changes in the same breath, so a running server's claim
// cannot slip in between; recipients in flight are left alone (and counted).

import Foundation
import GRDB
import GRDBSQLite
import CTernSystem

/// Which recipients an operator action applies to.
public enum QueueSelector: Sendable {
    case queueID(String)
    case domain(String)
    case all

    var sql: (String, StatementArguments) {
        switch self {
        case .queueID(let q): return ("r.message_id = (SELECT id FROM message WHERE queue_id = :sel)", ["sel": q])
        case .domain(let d): return ("r.domain = :sel", ["sel": d.lowercased()])
        case .all: return ("1", [:])
        }
    }
}

public struct AdminResult: Sendable, Equatable {
    public var changed: Int
    /// Matching recipients skipped because a delivery holds them right now.
    public var inflight: Int
}

/// One message with the details `tern queue show` prints.
public struct MessageDetail: Sendable {
    public var message: StoredMessage
    public var clientAddress: String?
    public var helo: String?
    public var headerMessageID: String?
    public var recipients: [Fields]
    public var attempts: [Fields]
    public var events: [Fields]
}

/// A row as ordered (column, value) pairs, for tables and JSON.
public typealias Fields = [(String, JSON)]

extension Row {
    var fields: Fields {
        columnNames.map { name in
            let v: DatabaseValue = self[name]
            switch v.storage {
            case .null: return (name, .null)
            case .int64(let i): return (name, .int64(i))
            case .double(let d): return (name, .string(String(d)))
            case .string(let s): return (name, .string(s))
            case .blob(let b): return (name, .string("<\(b.count) bytes>"))
            }
        }
    }
}

extension Store {
    /// Applies `build` to the matching recipients in `states`, message by
    /// message, in one transaction.
    public func adminTransition(_ selector: QueueSelector, states: [RecipientState], now: Int64,
                                build: @escaping @Sendable (StoredMessage, [ClaimedRecipient]) -> OutcomeBatch) async throws -> AdminResult {
        try await writeWithRollups { db, rollups in
            let (cond, args) = selector.sql
            let inflight = try Int.fetchOne(db, sql: "SELECT count(*) FROM recipient r WHERE r.state = \(RecipientState.inflight.sql) AND \(cond)", arguments: args) ?? 0
            let rows = try Row.fetchAll(db, sql: """
                SELECT r.id, r.message_id, r.address, r.domain, r.attempts, r.notify, r.orcpt, r.created_at, r.delay_notified_at
                  FROM recipient r WHERE \(states.orChain("r.state")) AND \(cond) ORDER BY r.message_id, r.id
                """, arguments: args)
            let recipients = rows.map { r in
                ClaimedRecipient(id: r[0], messageID: r[1], address: r[2], domain: r[3], attempts: r[4], notify: r[5],
                                 orcpt: r[6], createdAt: r[7], delayNotifiedAt: r[8])
            }
            for (messageID, group) in Dictionary(grouping: recipients, by: \.messageID) {
                guard let m = try Store.fetchMessage(messageID, db) else { continue }
                try Store.apply(build(m, group), db, rollups: &rollups)
            }
            return AdminResult(changed: recipients.count, inflight: inflight)
        }
    }

    /// Makes matching queued or deferred recipients due now.
    public func flush(_ selector: QueueSelector, now: Int64) async throws -> AdminResult {
        try await write { db in
            let (cond, args) = selector.sql
            var a = args
            a += ["now": now]
            let inflight = try Int.fetchOne(db, sql: "SELECT count(*) FROM recipient r WHERE r.state = \(RecipientState.inflight.sql) AND \(cond)", arguments: args) ?? 0
            let rows = try Row.fetchAll(db, sql: """
                UPDATE recipient AS r SET next_attempt_at = :now
                 WHERE \(StateSQL.claimable) AND \(cond) RETURNING id, message_id
                """, arguments: a)
            let event = try db.cachedStatement(sql: "INSERT INTO event (at, kind, message_id, recipient_id) VALUES (:at, \(EventKind.flushed.sql), :m, :r)")
            for r in rows { try event.execute(arguments: ["at": now, "m": r[1] as Int64, "r": r[0] as Int64]) }
            return AdminResult(changed: rows.count, inflight: inflight)
        }
    }

    /// Removes matching recipients that are not in flight (and a message once
    /// it has none left), leaving a `deleted` event for each.
    public func delete(_ selector: QueueSelector, now: Int64) async throws -> AdminResult {
        try await write { db in
            let (cond, args) = selector.sql
            let inflight = try Int.fetchOne(db, sql: "SELECT count(*) FROM recipient r WHERE r.state = \(RecipientState.inflight.sql) AND \(cond)", arguments: args) ?? 0
            try Rollups.removeRecipients(where: "r.state <> \(RecipientState.inflight.sql) AND \(cond)", args, db)
            let rows = try Row.fetchAll(db, sql: """
                DELETE FROM recipient AS r WHERE r.state <> \(RecipientState.inflight.sql) AND \(cond)
                RETURNING id, message_id, address, state
                """, arguments: args)
            let event = try db.cachedStatement(sql: "INSERT INTO event (at, kind, message_id, recipient_id, detail) VALUES (:at, \(EventKind.deleted.sql), :m, :r, :d)")
            for r in rows {
                let detail = JSON.object([("address", .string(r[2])), ("state", .string(r[3]))]).text
                try event.execute(arguments: ["at": now, "m": r[1] as Int64, "r": r[0] as Int64, "d": detail])
            }
            try db.execute(sql: "DELETE FROM message WHERE id IN (\(Set(rows.map { $0[1] as Int64 }).map(String.init).joined(separator: ",").nonEmpty ?? "NULL")) AND NOT EXISTS (SELECT 1 FROM recipient WHERE message_id = message.id)")
            return AdminResult(changed: rows.count, inflight: inflight)
        }
    }

    static func fetchMessage(_ id: Int64, _ db: Database) throws -> StoredMessage? {
        if case .found(let m) = try fetchMessage(id, db, admit: { _ in true }) { return m }
        return nil
    }

    /// Message `id`, its body read only if `admit` takes its length in
    /// bytes (delivery's memory budget): `.noRoom` (the rest of the
    /// message, without its body) otherwise. A caller
    /// whose `admit` reserved something gives it back if this throws.
    static func fetchMessage(_ id: Int64, _ db: Database, admit: (Int) -> Bool) throws -> MessageRead {
        // A large body is read by incremental BLOB I/O straight into its
        // buffer: a column value would be assembled from its overflow pages
        // in SQLite's memory first, then copied (length() reads no page).
        guard let r = try Row.fetchOne(db.cachedStatement(sql: """
            SELECT id, queue_id, received_at, mail_from, CASE WHEN length(body) <= \(Store.largeBody) THEN body END, env_id, ret,
                   body_type, smtputf8, origin, length(body) FROM message WHERE id = ?
            """), arguments: [id]) else { return .missing }
        let length: Int = r[10] ?? 0
        var message = StoredMessage(id: r[0], queueID: r[1], receivedAt: r[2], mailFrom: r[3], body: Data(), envID: r[5], ret: r[6],
                                    bodyType: r[7], smtputf8: (r[8] as Int) != 0, origin: r[9])
        guard admit(length) else {
            message.bodyRead = false
            return .noRoom(message, bytes: length)
        }
        message.body = length > Store.largeBody ? try readBody(db, messageID: id, count: length) : (r[4] ?? Data())
        return .found(message)
    }

    /// Bodies above this many bytes go in and out of the database by
    /// incremental BLOB I/O (sqlite3_blob_*), without a whole copy in
    /// SQLite's memory; below it, a blob handle costs more than the copy.
    public static let largeBody = 256 << 10

    /// Runs `body` with a handle on message `messageID`'s body (incremental
    /// BLOB I/O: sqlite3_blob_read/write), closed afterwards.
    static func withBodyBlob<T>(_ db: Database, messageID: Int64, writable: Bool, _ body: (OpaquePointer) throws -> T) throws -> T {
        var blob: OpaquePointer? = nil
        let code = sqlite3_blob_open(db.sqliteConnection, "main", "message", "body", messageID, writable ? 1 : 0, &blob)
        defer { sqlite3_blob_close(blob) }
        guard code == SQLITE_OK, let blob else { throw sqliteError(code, db) }
        return try body(blob)
    }

    static func readBody(_ db: Database, messageID: Int64, count: Int) throws -> Data {
        try withBodyBlob(db, messageID: messageID, writable: false) { blob in
            // A mapping of its own (tern_buf_*): its pages go back to the kernel
            // when the message is sent, not into a malloc arena.
            guard let bytes = tern_buf_allocate(count) else { throw sqliteError(SQLITE_NOMEM, db) }
            let read = sqlite3_blob_read(blob, bytes, Int32(count), 0)
            guard read == SQLITE_OK else {
                tern_buf_deallocate(bytes)
                throw sqliteError(read, db)
            }
            return Data(bytesNoCopy: bytes, count: count, deallocator: .custom { p, _ in tern_buf_deallocate(p) })
        }
    }

    /// A failed sqlite3_* call as GRDB's error (StoreError.classify reads it).
    static func sqliteError(_ code: Int32, _ db: Database) -> DatabaseError {
        DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
    }

    /// Everything about one message, for `tern queue show`.
    public func messageDetail(queueID: String) throws -> MessageDetail? {
        try read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT id, client_address, helo, header_message_id FROM message WHERE queue_id = ?", arguments: [queueID]),
                  let m = try Store.fetchMessage(row[0], db) else { return nil }
            let recipients = try Row.fetchAll(db, sql: """
                SELECT id, address, state, attempts, next_attempt_at, last_code, last_enhanced, last_text, notify, orcpt, final_at
                  FROM recipient WHERE message_id = ? ORDER BY id
                """, arguments: [m.id])
            let attempts = try Row.fetchAll(db, sql: """
                SELECT r.address, a.started_at, a.ended_at, a.mx_host, a.mx_address, a.tls, a.code, a.enhanced, a.text, a.outcome
                  FROM attempt a JOIN recipient r ON r.id = a.recipient_id WHERE r.message_id = ? ORDER BY a.id
                """, arguments: [m.id])
            let events = try Row.fetchAll(db, sql: "SELECT at, kind, recipient_id, detail FROM event WHERE message_id = ? ORDER BY id", arguments: [m.id])
            return MessageDetail(message: m, clientAddress: row[1], helo: row[2], headerMessageID: row[3],
                                 recipients: recipients.map(\.fields), attempts: attempts.map(\.fields), events: events.map(\.fields))
        }
    }
}

extension String {
    var nonEmpty: String? { isEmpty ? nil : self }
}
